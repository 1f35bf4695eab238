# Replicate retrieval per plate: each well queries the other wells of its plate (or of every plate of
# its split, evaluate.reference: split). One job per plate evaluates every method (the model and each
# baseline): a job per plate and step keeps the DAG small for thousands of plates (benchmarks/dag.md).


rule evaluate:
    input:
        **{m: ranked_profiles(m) for m in METHODS},
    output:
        **{m: f"{R}/ap/{m}/{{plate}}.parquet" for m in METHODS},
    params:
        settings=settings(
            annotation=ANNOTATION,
            negcon_as_negatives=EVAL["negcon_as_negatives"],
            reference=EVAL["reference"],
            moa_column=EVAL["moa_column"],
            baseline_corrected=EVAL["baseline_corrected"],
        ),
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
        f"python -m cytoagg evaluate {named_file_args('--profiles', METHODS, 'input')} "
        f"{named_file_args('--out', METHODS, 'output')} "
        "--plate {wildcards.plate:q} --params {params.settings:q} 2> {log:q}"
