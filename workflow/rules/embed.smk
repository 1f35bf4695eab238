# The model's well profiles: every well of every plate from ALL its cells (no sampling).


rule embed:
    input:
        normalized=f"{R}/normalized/{{plate}}.parquet",
        model=model_path(),
    output:
        f"{R}/profiles/model/{{plate}}.parquet",
    params:
        settings=EMBED_SETTINGS,
    log:
        f"{R}/logs/embed/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/embed/{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=4, floor=1500),
        runtime=runtime_from_input(floor=10, per_gb=10),
        **GPU,
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg embed --normalized {input.normalized:q} --checkpoint {input.model:q} --out {output:q} "
        "--plate {wildcards.plate:q} --threads {threads} --params {params.settings:q} 2> {log:q}"
