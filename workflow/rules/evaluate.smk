# Replicate retrieval per plate and method: each well queries the other wells of its plate (or of every
# plate of its split, evaluate.reference: split). Optional: the mAP-vs-cells-sampled sweep.

EVAL = config["evaluate"]
SWEEP_SIZES = sorted(set(EVAL["sampling_sweep"]))


# The sweep and the effective-rank diagnostics run the model too, but are small: no GPU asked for (the
# CPU, or a GPU where one is visible to the job anyway).
TORCH_SIDE_DEVICE = "cpu" if config["train"]["device"] == "cpu" else "auto"

# One job per plate evaluates every method (the model and each baseline): a job per plate and step keeps
# the DAG small for thousands of plates (benchmarks/dag.md). Its input is each method's ranked plates
# in turn, in the order of its outputs.
rule evaluate:
    input:
        EVALUATE_INPUT,
    output:
        expand(f"{R}/ap/{{method}}/{{{{plate}}}}.parquet", method=METHODS),
    params:
        settings=settings(
            negcon_as_negatives=EVAL["negcon_as_negatives"],
            reference=EVAL["reference"],
            moa_column=EVAL["moa_column"],
            baseline_corrected=EVAL["baseline_corrected"],
            **ANNOTATION,
        ),
        methods=METHODS,
    log:
        f"{R}/logs/evaluate/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{plate}}.tsv"
    threads: 1
    resources:
        # one method's profiles in memory at a time: one plate's are small (384 wells); every plate of a split's may not be
        mem_mb=1000 if RANK_WITHIN_PLATE else mem_from_input(factor=2, floor=1000),
        runtime=10 if RANK_WITHIN_PLATE else runtime_from_input(floor=10, per_gb=10),
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg evaluate --profiles {input:q} --out {output:q} --method {params.methods:q} "
        "--plate {wildcards.plate:q} --params {params.settings:q} 2> {log:q}"


rule evaluate_sampling:
    input:
        normalized=f"{R}/normalized/{{plate}}.parquet",
        model=model_path(),
        features=f"{R}/features.txt",
    output:
        f"{R}/sampling/{{plate}}.parquet",
    params:
        settings=settings(
            sizes=SWEEP_SIZES,
            seeds=EVAL["sampling_seeds"],
            negcon_as_negatives=EVAL["negcon_as_negatives"],
            embedding=config["train"]["embedding"],
            device=TORCH_SIDE_DEVICE,
            **ANNOTATION,
        ),
    log:
        f"{R}/logs/evaluate_sampling/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate_sampling/{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=5, floor=1500),
        runtime=runtime_from_input(floor=15, per_gb=60),
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg evaluate-sampling --normalized {input.normalized:q} --checkpoint {input.model:q} "
        "--features {input.features:q} --out {output:q} --plate {wildcards.plate:q} --threads {threads} "
        "--params {params.settings:q} 2> {log:q}"
