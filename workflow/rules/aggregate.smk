# The non-learned well profiles (evaluate.baselines; the mean always). One job per plate writes every
# baseline: the plate is read once, and the DAG stays small (a job per plate and step, whatever the
# number of baselines; see benchmarks/dag.md).


rule aggregate:
    input:
        normalized=f"{R}/normalized/{{plate}}.parquet",
        features=f"{R}/features.txt",
        covariance=[f"{R}/covariance_features.txt"] if "mean_cov" in BASELINES else [],
    output:
        **{b: f"{R}/profiles/{b}/{{plate}}.parquet" for b in BASELINES},
    params:
        settings=settings(**ANNOTATION),
    log:
        f"{R}/logs/aggregate/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/aggregate/{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=3, floor=1000),
        runtime=runtime_from_input(floor=10, per_gb=5),
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg aggregate --normalized {input.normalized:q} --features {input.features:q} "
        "--covariance-features {input.covariance:q} "
        f"--plate {{wildcards.plate:q}} {named_file_args('--out', BASELINES, 'output')} "
        "--params {params.settings:q} 2> {log:q}"
