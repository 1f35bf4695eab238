# The mAP tables: per plate x method x profile pipeline x compound split (csv, and the headline tables in md),
# per compound with its permutation p-value, and the verdict: the model against the best non-learned profile.


rule summarize:
    input:
        **{k: expand(ap_file(m, p), plate=PLATES) for k, (m, p) in PROFILES.items()},
    output:
        csv=report(f"{R}/tables/map_per_plate.csv", caption="../report/map_table.rst", category="3. Tables"),
        md=f"{R}/tables/map_per_plate.md",
        compounds=report(
            f"{R}/tables/ap_per_compound.csv", caption="../report/ap_per_compound.rst", category="3. Tables"
        ),
        verdict=report(f"{R}/tables/verdict.csv", caption="../report/verdict.rst", category="1. Verdict"),
        verdict_md=f"{R}/tables/verdict.md",
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
        f"python -m cytoagg summarize {named_file_args('--ap', PROFILES, 'input')} "
        "--out-csv {output.csv:q} --out-md {output.md:q} --out-compounds {output.compounds:q} "
        "--out-verdict-csv {output.verdict:q} --out-verdict-md {output.verdict_md:q} "
        "--params {params.settings:q} 2> {log:q}"
