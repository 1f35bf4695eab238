# Well profiles: the model's (every well from ALL its cells) and the non-learned baselines.


rule embed:
    input:
        normalized=f"{R}/normalized/{{plate}}.parquet",
        model=model_path(),
    output:
        f"{R}/profiles/model/{{plate}}.parquet",
    params:
        settings=settings(
            embedding=config["train"]["embedding"],
            device=config["train"]["device"],
            normalization=NORMALIZATION,
            **ANNOTATION,
        ),
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


# One job per plate writes every baseline: the plate is read once, and the DAG stays small (a job per
# plate and step, whatever the number of baselines; see benchmarks/dag.md).
rule aggregate:
    input:
        normalized=f"{R}/normalized/{{plate}}.parquet",
        features=f"{R}/features.txt",
    output:
        expand(f"{R}/profiles/{{baseline}}/{{{{plate}}}}.parquet", baseline=BASELINES),
    params:
        settings=settings(**ANNOTATION),
        methods=BASELINES,
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
        "python -m cytoagg aggregate --normalized {input.normalized:q} --features {input.features:q} --out {output:q} "
        "--method {params.methods:q} --plate {wildcards.plate:q} --params {params.settings:q} 2> {log:q}"
