# Every method's well profiles (the model's and each baseline's), all plates of the run in one AnnData file
# per method, for scanpy / scverse users: obs = the Metadata_* columns, var = the feature names, X = the
# profiles (cytoagg.profiles.export). The Parquet profiles stay as they are; this only adds a copy.
#
# The file is named after what it holds, {method}.h5ad. A further dimension of profiles (e.g. a processing
# pipeline applied to each method's profiles) becomes {method}__{pipeline}.h5ad with its own input pattern;
# `method` is constrained to the method names so that the two patterns never match each other's files.


rule export_anndata:
    input:
        expand(f"{R}/profiles/{{{{method}}}}/{{plate}}.parquet", plate=PLATES),
    output:
        f"{R}/anndata/{{method}}.h5ad",
    wildcard_constraints:
        method="|".join(METHODS),
    params:
        settings=settings(**ANNOTATION),
    log:
        f"{R}/logs/export_anndata/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/export_anndata/{{method}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,  # the metadata of every plate, the features of one plate at a time
        runtime=runtime_from_input(floor=10, per_gb=5),
    conda:
        f"{ENVS}/tables.yaml"
    # The file list goes through a pipe (printf is a shell builtin), not on a command line.
    shell:
        "printf '%s\\n' {input:q} | python -m cytoagg export-anndata --profile-list - --method {wildcards.method:q} "
        "--out {output:q} --params {params.settings:q} 2> {log:q}"
