# Which cells the model listens to (config saliency:): per-cell saliencies of every plate's cells (one job per
# plate, after embed's model), their correlations with the input features, and, on a synthetic screen with
# debris, how well they rank the debris below the cells.


rule saliency:
    input:
        normalized=f"{R}/normalized/{{plate}}.parquet",
        model=model_path(),
    output:
        cells=f"{R}/saliency/{{plate}}.parquet",
        correlation=f"{R}/saliency/correlation/{{plate}}.parquet",
    params:
        settings=settings(
            annotation=ANNOTATION,
            device=config["train"]["device"],
            precision=PRECISION,
            **{k: SALIENCY[k] for k in ("gradient", "min_cells", "correlation_cells")},
        ),
    log:
        f"{R}/logs/saliency/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/saliency/{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=1, floor=1500),
        runtime=runtime_from_input(floor=10, per_gb=30),
        **GPU,
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg saliency --normalized {input.normalized:q} --checkpoint {input.model:q} "
        "--out-cells {output.cells:q} --out-correlation {output.correlation:q} --plate {wildcards.plate:q} "
        "--threads {threads} --params {params.settings:q} 2> {log:q}"


rule summarize_saliency:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    input:
        expand(f"{R}/saliency/correlation/{{plate}}.parquet", plate=PLATES),
    output:
        report(
            f"{R}/tables/saliency_feature_correlation.csv", caption="../report/saliency_feature_correlation_table.rst",
            category="Saliency",
        ),
    params:
        settings=settings(**SPLITS),
    log:
        f"{R}/logs/summarize_saliency.log",
    benchmark:
        f"{R}/benchmarks/summarize_saliency.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg summarize-saliency --correlation {input:q} --out {output:q} --params {params.settings:q} 2> {log:q}"


rule saliency_debris:
    input:
        saliency=expand(f"{R}/saliency/{{plate}}.parquet", plate=PLATES),
        debris=expand(f"{R}/synthetic/debris/{{plate}}.parquet", plate=PLATES),
    output:
        report(f"{R}/tables/saliency_debris_auroc.csv", caption="../report/saliency_debris_auroc.rst", category="Saliency"),
    params:
        settings=settings(annotation=ANNOTATION, splits=SPLITS),
    log:
        f"{R}/logs/saliency_debris.log",
    benchmark:
        f"{R}/benchmarks/saliency_debris.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=4, floor=1000),
        runtime=10,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg saliency-debris --saliency {input.saliency:q} --debris {input.debris:q} --out {output:q} "
        "--params {params.settings:q} 2> {log:q}"
