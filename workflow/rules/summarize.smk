# The mAP tables: per plate x method x compound split (csv, and the headline tables in md), and per compound
# with its permutation p-value.


rule summarize:
    input:
        **{m: expand(f"{R}/ap/{m}/{{plate}}.parquet", plate=PLATES) for m in METHODS},
    output:
        csv=report(f"{R}/tables/map_per_plate.csv", caption="../report/map_table.rst", category="Tables"),
        md=f"{R}/tables/map_per_plate.md",
        compounds=report(
            f"{R}/tables/ap_per_compound.csv", caption="../report/ap_per_compound.rst", category="Tables"
        ),
    params:
        settings=settings(
            splits=SPLITS,
            null_size=EVAL["null_size"],
            significance_threshold=EVAL["significance_threshold"],
            seed=EVAL["seed"],
        ),
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
        f"python -m cytoagg summarize {named_file_args('--ap', METHODS, 'input')} "
        "--out-csv {output.csv:q} --out-md {output.md:q} --out-compounds {output.compounds:q} "
        "--params {params.settings:q} 2> {log:q}"
