# The sampling sweep (evaluate.sampling_sweep): mAP when each well is profiled from N sampled cells, for the
# model and the mean baseline, against all cells. One job per plate, then the summary.


rule sampling_sweep:
    input:
        normalized=f"{R}/normalized/{{plate}}.parquet",
        model=model_path(),
        features=f"{R}/features.txt",
    output:
        f"{R}/sampling_sweep/{{plate}}.parquet",
    params:
        settings=settings(
            annotation=ANNOTATION,
            sizes=SWEEP_SIZES,
            seeds=EVAL["sampling_seeds"],
            negcon_as_negatives=EVAL["negcon_as_negatives"],
            embedding=config["train"]["embedding"],
            device=TORCH_SIDE_DEVICE,
            precision=PRECISION,
        ),
    log:
        f"{R}/logs/sampling_sweep/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/sampling_sweep/{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=5, floor=1500),
        runtime=runtime_from_input(floor=15, per_gb=60),
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg sampling-sweep --normalized {input.normalized:q} --checkpoint {input.model:q} "
        "--features {input.features:q} --out {output:q} --plate {wildcards.plate:q} --threads {threads} "
        "--params {params.settings:q} 2> {log:q}"


rule summarize_sampling_sweep:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    input:
        expand(f"{R}/sampling_sweep/{{plate}}.parquet", plate=PLATES),
    output:
        csv=report(f"{R}/tables/sampling_sweep.csv", caption="../report/sampling_sweep_table.rst", category="6. Sampling"),
        md=f"{R}/tables/sampling_sweep.md",
    params:
        settings=settings(**SPLITS),
    log:
        f"{R}/logs/summarize_sampling_sweep.log",
    benchmark:
        f"{R}/benchmarks/summarize_sampling_sweep.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg summarize-sampling-sweep --sweep {input:q} --out-csv {output.csv:q} --out-md {output.md:q} "
        "--params {params.settings:q} 2> {log:q}"
