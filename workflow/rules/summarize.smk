# The mAP tables: per plate x method x profile pipeline x compound split (csv, and the headline tables in md),
# per compound with its permutation p-value, and the verdict: the model against the best non-learned profile.


rule summarize:
    input:
        expand(f"{R}/ap/{{plate}}.parquet", plate=PLATES),
    output:
        csv=report(f"{R}/tables/map_per_plate.csv", caption="../report/map_table.rst", category="3. Tables"),
        md=f"{R}/tables/map_per_plate.md",
        compounds=report(
            f"{R}/tables/ap_per_compound.csv", caption="../report/ap_per_compound.rst", category="3. Tables"
        ),
        verdict=report(f"{R}/tables/verdict.csv", caption="../report/verdict.rst", category=KEY_RESULTS),
        verdict_md=f"{R}/tables/verdict.md",
    params:
        settings=settings(
            splits=SPLITS,
            null_size=EVAL["null_size"],
            significance_threshold=EVAL["significance_threshold"],
            seed=EVAL["seed"],
        ),
        # the report's captions of the tables say what the design cannot measure (no held-out plates, ...)
        design_notes=config_design_notes(TRAIN_PLATES, VALIDATION_PLATES, config["compounds"]["validation"]),
    log:
        f"{R}/logs/summarize.log",
    benchmark:
        f"{R}/benchmarks/summarize.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg summarize --ap {input:q} --out-csv {output.csv:q} --out-md {output.md:q} --out-compounds {output.compounds:q} "
        "--out-verdict-csv {output.verdict:q} --out-verdict-md {output.verdict_md:q} "
        "--params {params.settings:q} 2> {log:q}"
