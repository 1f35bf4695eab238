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


# The mean_cov baseline's covariance features, chosen once on the training plates' cells (a rule of its own,
# so that changing evaluate.cov_max_features never touches features.txt and what depends on it).
rule covariance_features:
    input:
        plates=expand(f"{R}/normalized/{{plate}}.parquet", plate=TRAIN_PLATES),
        features=f"{R}/features.txt",
    output:
        f"{R}/covariance_features.txt",
    params:
        settings=settings(
            cov_max_features=EVAL["cov_max_features"],
            max_cells=config["feature_select"]["max_cells"],
            seed=config["feature_select"]["seed"],
        ),
    log:
        f"{R}/logs/covariance_features.log",
    benchmark:
        f"{R}/benchmarks/covariance_features.tsv"
    threads: 1
    resources:
        mem_mb=lambda w: 2000 + config["feature_select"]["max_cells"] // 100,
        runtime=runtime_from_input(floor=15, per_gb=5),
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg covariance-features --plates {input.plates:q} --features {input.features:q} --out {output:q} "
        "--params {params.settings:q} 2> {log:q}"
