# Profile pipelines: every method's well profiles (the model's too) through the field's per-plate processing
# (evaluate.pipelines): negcon_mad (per plate, against its negative controls), negcon_mad_sphere (then
# sphering fit on the training plates' negative controls) and, for evaluate.reference: split, harmony.


rule fit_sphering:
    input:
        **{m: expand(profile_file(m, "raw"), plate=TRAIN_PLATES) for m in METHODS},
    output:
        f"{R}/pipelines/sphering.npz",
    params:
        settings=PIPELINE_SETTINGS,
    log:
        f"{R}/logs/fit_sphering.log",
    benchmark:
        f"{R}/benchmarks/fit_sphering.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        f"python -m cytoagg fit-sphering {named_file_args('--profiles', METHODS, 'input')} "
        "--out {output:q} --params {params.settings:q} 2> {log:q}"


# One job per plate writes every method's per-plate pipelines: the plate's profiles are read once.
rule profile_pipelines:
    input:
        **{m: profile_file(m, "raw") for m in METHODS},
        sphering=[f"{R}/pipelines/sphering.npz"] if "negcon_mad_sphere" in PIPELINES else [],
    output:
        **{profile_key(m, p): profile_file(m, p) for m in METHODS for p in PLATE_PIPELINES},  # PLATE_PIPELINE_PROFILES
    params:
        settings=PIPELINE_SETTINGS,
    log:
        f"{R}/logs/profile_pipelines/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/profile_pipelines/{{plate}}.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        f"python -m cytoagg profile-pipelines {named_file_args('--profiles', METHODS, 'input')} "
        f"{named_file_args('--out', PLATE_PIPELINE_PROFILES, 'output')} "
        "--sphering {input.sphering:q} --params {params.settings:q} 2> {log:q}"


if "harmony" in PIPELINES:

    # Harmony over the plates of a split (one job per split): the training plates', then the validation plates'.
    rule harmony_train:
        input:
            **{m: expand(profile_file(m, "raw"), plate=TRAIN_PLATES) for m in METHODS},
        output:
            **{m: expand(profile_file(m, "harmony"), plate=TRAIN_PLATES) for m in METHODS},
        params:
            settings=PIPELINE_SETTINGS,
        log:
            f"{R}/logs/harmony/train.log",
        benchmark:
            f"{R}/benchmarks/harmony/train.tsv"
        threads: 1
        resources:
            mem_mb=mem_from_input(factor=4, floor=1000),
            runtime=runtime_from_input(floor=10, per_gb=20),
        conda:
            f"{ENVS}/tables.yaml"
        shell:
            f"python -m cytoagg harmony {named_file_args('--profiles', METHODS, 'input')} "
            f"{named_file_args('--out', METHODS, 'output')} --params {{params.settings:q}} 2> {{log:q}}"


    use rule harmony_train as harmony_validation with:
        input:
            **{m: expand(profile_file(m, "raw"), plate=VALIDATION_PLATES) for m in METHODS},
        output:
            **{m: expand(profile_file(m, "harmony"), plate=VALIDATION_PLATES) for m in METHODS},
        log:
            f"{R}/logs/harmony/validation.log",
        benchmark:
            f"{R}/benchmarks/harmony/validation.tsv"
