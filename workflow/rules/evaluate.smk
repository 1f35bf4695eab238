# Replicate retrieval per plate and method: each well queries the other wells of its plate (or of every
# plate of its split, evaluate.reference: split). Optional: the mAP-vs-cells-sampled sweep.

EVAL = config["evaluate"]
SWEEP_SIZES = sorted(set(EVAL["sampling_sweep"]))


# The sweep and the effective-rank diagnostics run the model too, but are small: no GPU asked for (the
# CPU, or a GPU where one is visible to the job anyway).
TORCH_SIDE_DEVICE = "cpu" if config["train"]["device"] == "cpu" else "auto"

# The plates each plate's wells are ranked against: its own, or every plate of its split.
RANKED_AGAINST = {p: [p] for p in PLATES}
if EVAL["reference"] == "split":
    RANKED_AGAINST = {p: list(s) for s in (TRAIN_PLATES, VALIDATION_PLATES) for p in s}


rule evaluate:
    input:
        lambda w: [f"{R}/profiles/{w.method}/{p}.parquet" for p in RANKED_AGAINST.get(w.plate, [w.plate])],
    output:
        f"{R}/ap/{{method}}/{{plate}}.parquet",
    params:
        settings=lambda w: settings(
            negcon_as_negatives=EVAL["negcon_as_negatives"],
            reference=EVAL["reference"],
            moa_column=EVAL["moa_column"],
            baseline_corrected=EVAL["baseline_corrected"],
            **ANNOTATION,
        ),
    log:
        f"{R}/logs/evaluate/{{method}}/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{method}}/{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=4, floor=1000),
        runtime=runtime_from_input(floor=10, per_gb=10),
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg evaluate --profiles {input:q} --plate {wildcards.plate:q} --out {output:q} "
        "--params {params.settings:q} 2> {log:q}"


rule evaluate_sampling:
    input:
        normalized=f"{R}/normalized/{{plate}}.parquet",
        model=model_path(),
        features=f"{R}/features.txt",
    output:
        f"{R}/sampling/{{plate}}.parquet",
    params:
        settings=lambda w: settings(
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
