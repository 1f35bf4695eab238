# The built-in dataset, generated when the config names no data (dataset.path: null).


rule synthetic_plate:
    output:
        plate=f"{R}/synthetic/plates/{{plate}}.sqlite",
        debris=f"{R}/synthetic/debris/{{plate}}.parquet",
    params:
        settings=settings(**config["synthetic"]),
    log:
        f"{R}/logs/synthetic_plate/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/synthetic_plate/{{plate}}.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg synthetic-plate --plate {wildcards.plate:q} --out {output.plate:q} "
        "--out-debris {output.debris:q} --params {params.settings:q} 2> {log:q}"


rule synthetic_platemap:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    output:
        f"{R}/synthetic/platemap/synthetic_platemap.txt",
    params:
        settings=settings(**config["synthetic"]),
    log:
        f"{R}/logs/synthetic_platemap.log",
    benchmark:
        f"{R}/benchmarks/synthetic_platemap.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg synthetic-platemap --out {output:q} --params {params.settings:q} 2> {log:q}"
