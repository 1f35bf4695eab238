# Replicate retrieval per plate: each well queries the other wells of its plate (or of every plate of
# its split, evaluate.reference: split). One job per plate evaluates every profile (every method through every
# pipeline): a job per plate and step keeps the DAG small for thousands of plates (benchmarks/dag.md).


rule evaluate:
    input:
        **{k: ranked_profiles(m, p) for k, (m, p) in PROFILES.items()},
    output:
        **{k: ap_file(m, p) for k, (m, p) in PROFILES.items()},
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
        # one profile's wells in memory at a time: one plate's are small (384 wells); every plate of a split's may not be
        mem_mb=1000 if RANK_WITHIN_PLATE else mem_from_input(factor=2, floor=1000),
        runtime=10 if RANK_WITHIN_PLATE else runtime_from_input(floor=10, per_gb=10),
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        f"python -m cytoagg evaluate {named_file_args('--profiles', PROFILES, 'input')} "
        f"{named_file_args('--out', PROFILES, 'output')} "
        "--plate {wildcards.plate:q} --params {params.settings:q} 2> {log:q}"
