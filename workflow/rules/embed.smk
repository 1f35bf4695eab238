# The model's well profiles: every well of every plate from ALL its cells (no sampling), with the model's
# controls from the same read of the plate: the untrained network, and the network trained on well means.


rule embed:
    input:
        normalized=f"{R}/normalized/{{plate}}.parquet",
        model=model_path(),
        mlp_on_mean=[f"{R}/controls/mlp_on_mean/model.pt"] if "mlp_on_mean" in CONTROLS else [],
    output:
        **{m: f"{R}/profiles/{m}/{{plate}}.parquet" for m in ["model", *CONTROLS]},
    params:
        settings=EMBED_SETTINGS,
    log:
        f"{R}/logs/embed/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/embed/{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=1, floor=1500),  # streams the cells: the metadata and one chunk (1.3 GB for 768,000 cells x 1,000 features)
        runtime=runtime_from_input(floor=10, per_gb=10),
        **GPU,
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg embed --normalized {input.normalized:q} --checkpoint {input.model:q} "
        "--mlp-on-mean {input.mlp_on_mean:q} "
        f"{named_file_args('--out', ['model', *CONTROLS], 'output')} "
        "--plate {wildcards.plate:q} --threads {threads} --params {params.settings:q} 2> {log:q}"
