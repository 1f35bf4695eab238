# The report's figures, one rule and one CLI subcommand each; `snakemake --report report.html` collects
# the outputs marked with report().


rule plot_map:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    input:
        f"{R}/tables/map_per_plate.csv",
    output:
        report(f"{R}/plots/map_per_plate.png", caption="../report/map_per_plate.rst", category=KEY_RESULTS),
    log:
        f"{R}/logs/plot_map.log",
    benchmark:
        f"{R}/benchmarks/plot_map.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot-map --table {input:q} --out {output:q} 2> {log:q}"


rule plot_pr_curves:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    input:
        **{m: f"{R}/profiles/{m}/{DIAGNOSTIC_PLATES[0]}.parquet" for m in METHODS},
    output:
        report(f"{R}/plots/pr_curves.png", caption="../report/pr_curves.rst", category="2. Evaluation"),
    params:
        settings=settings(
            annotation=ANNOTATION,
            plate=DIAGNOSTIC_PLATES[0],
            group_column=EVAL["pr_curve_column"],
            negcon_as_negatives=EVAL["negcon_as_negatives"],
            split=COMPOUND_SPLIT,
        ),
    log:
        f"{R}/logs/plot_pr_curves.log",
    benchmark:
        f"{R}/benchmarks/plot_pr_curves.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        f"python -m cytoagg plot-pr-curves {named_file_args('--profiles', METHODS, 'input')} "
        "--out {output:q} --params {params.settings:q} 2> {log:q}"


rule plot_training:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    input:
        f"{R}/model/training_log.csv",
    output:
        report(f"{R}/plots/training_curve.png", caption="../report/training_curve.rst", category="4. Training"),
    log:
        f"{R}/logs/plot_training.log",
    benchmark:
        f"{R}/benchmarks/plot_training.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot-training --training-log {input:q} --out {output:q} 2> {log:q}"


rule plot_cells_per_well:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    input:
        expand(f"{R}/profiles/mean/{{plate}}.parquet", plate=PLATES),
    output:
        report(f"{R}/plots/cells_per_well.png", caption="../report/cells_per_well.rst", category="7. Data"),
    params:
        settings=settings(**ANNOTATION),
    log:
        f"{R}/logs/plot_cells_per_well.log",
    benchmark:
        f"{R}/benchmarks/plot_cells_per_well.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot-cells-per-well --profiles {input:q} --out {output:q} --params {params.settings:q} 2> {log:q}"


rule plot_effective_rank:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    input:
        summary=f"{R}/tables/effective_rank.csv",
        spectra=f"{R}/tables/effective_rank_spectra.csv",
    output:
        report(f"{R}/plots/effective_rank.png", caption="../report/effective_rank.rst", category="5. Model"),
    log:
        f"{R}/logs/plot_effective_rank.log",
    benchmark:
        f"{R}/benchmarks/plot_effective_rank.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot-effective-rank --summary {input.summary:q} --spectra {input.spectra:q} "
        "--out {output:q} 2> {log:q}"


rule plot_sampling_sweep:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    input:
        table=f"{R}/tables/sampling_sweep.csv",
        profiles=expand(f"{R}/profiles/mean/{{plate}}.parquet", plate=PLATES),
    output:
        report(f"{R}/plots/sampling_sweep.png", caption="../report/sampling_sweep.rst", category="6. Sampling"),
    params:
        settings=settings(**ANNOTATION),
    log:
        f"{R}/logs/plot_sampling_sweep.log",
    benchmark:
        f"{R}/benchmarks/plot_sampling_sweep.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot-sampling-sweep --table {input.table:q} --profiles {input.profiles:q} --out {output:q} "
        "--params {params.settings:q} 2> {log:q}"


# The report's front page (the Snakefile's report: directive): the verdict and the mAP-per-plate figure.
rule front_page:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    input:
        verdict=f"{R}/tables/verdict.csv",
        table=f"{R}/tables/map_per_plate.csv",
        figure=f"{R}/plots/map_per_plate.png",
    output:
        FRONT_PAGE,
    params:
        config_note=(
            f"**Config:** {', '.join(CONFIG_FILES)} "
            f"({'the demo config' if DEMO_CONFIG else 'over the schema defaults'}); every value and its source: "
            f"{CONFIG_USED}"
        ),
    log:
        f"{R}/logs/front_page.log",
    benchmark:
        f"{R}/benchmarks/front_page.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg front-page --verdict {input.verdict:q} --table {input.table:q} --figure {input.figure:q} "
        "--out {output:q} --config-note {params.config_note:q} 2> {log:q}"


rule plot_saliency_correlation:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    input:
        f"{R}/tables/saliency_feature_correlation.csv",
    output:
        report(f"{R}/plots/saliency_feature_correlation.png", caption="../report/saliency_feature_correlation.rst",
               category="Saliency"),
    log:
        f"{R}/logs/plot_saliency_correlation.log",
    benchmark:
        f"{R}/benchmarks/plot_saliency_correlation.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot-saliency-correlation --table {input:q} --out {output:q} 2> {log:q}"


rule plot_saliency_cells:
    input:
        saliency=expand(f"{R}/saliency/{{plate}}.parquet", plate=DIAGNOSTIC_PLATES),
        normalized=expand(f"{R}/normalized/{{plate}}.parquet", plate=DIAGNOSTIC_PLATES),
        table=f"{R}/tables/saliency_feature_correlation.csv",
        # the synthetic screen's side tables of debris; none for a user's plates (--debris is then given no file)
        debris=expand(f"{R}/synthetic/debris/{{plate}}.parquet", plate=DIAGNOSTIC_PLATES) if SYNTHETIC else [],
    output:
        report(f"{R}/plots/saliency_cells.png", caption="../report/saliency_cells.rst", category="Saliency"),
    params:
        settings=settings(annotation=ANNOTATION, plot_wells=SALIENCY["plot_wells"]),
    log:
        f"{R}/logs/plot_saliency_cells.log",
    benchmark:
        f"{R}/benchmarks/plot_saliency_cells.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=2, floor=1000),
        runtime=10,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg plot-saliency-cells --saliency {input.saliency:q} --normalized {input.normalized:q} "
        "--table {input.table:q} --debris {input.debris:q} --out {output:q} --params {params.settings:q} 2> {log:q}"
