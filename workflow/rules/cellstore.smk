# The cell store: each training plate's normalized cells (selected features) packed once into a folder
# holding one float32 array grouped by well, which training memory-maps, and a per-well index.


rule pack_cells:
    input:
        normalized=f"{R}/normalized/{{plate}}.parquet",
        features=f"{R}/features.txt",
    output:
        directory(f"{R}/cellstore/{{plate}}"),
    params:
        settings=settings(**ANNOTATION),
    log:
        f"{R}/logs/pack_cells/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/pack_cells/{{plate}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(factor=3, floor=1000),
        runtime=runtime_from_input(floor=10, per_gb=5),
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg pack-cells --normalized {input.normalized:q} --features {input.features:q} "
        "--out {output:q} --plate {wildcards.plate:q} "
        "--params {params.settings:q} 2> {log:q}"
