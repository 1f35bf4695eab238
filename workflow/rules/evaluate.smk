# Replicate retrieval per plate and method: each well queries the other wells of its plate.


rule evaluate:
    input:
        f"{R}/profiles/{{method}}/{{plate}}.parquet",
    output:
        f"{R}/ap/{{method}}/{{plate}}.parquet",
    params:
        settings=lambda w: settings(negcon_as_negatives=config["evaluate"]["negcon_as_negatives"], **ANNOTATION),
    log:
        f"{R}/logs/evaluate/{{method}}/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{method}}/{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg evaluate --profiles {input:q} --out {output:q} --params {params.settings:q} 2> {log:q}"
