# Every config value this run used, each with its source (a config file, --config, or the schema's default):
# results/config_used.yaml. The Snakefile's log line names the files; this file has the rest.


rule config_used:
    localrule: True  # light: on a cluster it runs in the submitting snakemake, not as a job
    output:
        CONFIG_USED,
    params:
        # a rerun trigger: any changed value (or source) rewrites the file (braces escaped, as every settings JSON)
        settings=settings(config=config, sources=CONFIG_SOURCES),
    log:
        f"{R}/logs/config_used.log",
    benchmark:
        f"{R}/benchmarks/config_used.tsv"
    threads: 1
    resources:
        **SMALL,
    run:
        cytoagg.config_sources.write_config_used(config, CONFIG_SOURCES, CONFIG_FILES, output[0], log[0])
