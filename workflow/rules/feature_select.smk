# Feature selection (pycytominer's operations), fit on the training plates' normalized cells only and
# applied to every plate downstream.


rule select_features:
    input:
        expand(f"{R}/normalized/{{plate}}.parquet", plate=TRAIN_PLATES),
    output:
        f"{R}/features.txt",
    params:
        settings=settings(blocklist=config["dataset"]["blocklist"] or None, **config["feature_select"]),
    log:
        f"{R}/logs/select_features.log",
    benchmark:
        f"{R}/benchmarks/select_features.tsv"
    threads: 1
    resources:
        mem_mb=lambda w: 2000 + config["feature_select"]["max_cells"] // 100,
        runtime=runtime_from_input(floor=15, per_gb=5),
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg select-features --plates {input:q} --out {output:q} --params {params.settings:q} 2> {log:q}"
