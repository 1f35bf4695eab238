# dataset.features: common: the features every configured plate has after normalization, and what each plate
# loses (the log, one console warning, and a table). Feature selection chooses among them.


rule common_features:
    input:
        expand(f"{R}/normalized/{{plate}}.parquet", plate=PLATES),
    output:
        common=f"{R}/common_features.txt",
        dropped=f"{R}/common_features_dropped.csv",
    log:
        f"{R}/logs/common_features.log",
    benchmark:
        f"{R}/benchmarks/common_features.tsv"
    threads: 1
    resources:
        **SMALL,  # reads each plate's schema only
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg common-features --plates {input:q} --out {output.common:q} --out-dropped {output.dropped:q} "
        "2> {log:q}"
