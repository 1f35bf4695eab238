# The set model, trained once on the training plates' training compounds (GPU when present), from
# cell stores: each training plate's normalized cells packed once into one array that training memory-maps.
# Skipped when train.checkpoint names an existing model.


# What a model's input means (stored in its checkpoint, checked when embedding); memory_mb is not part of it.
NORMALIZATION = {k: v for k, v in config["normalize"].items() if k != "memory_mb"}


rule pack_cells:
    input:
        normalized=f"{R}/normalized/{{plate}}.parquet",
        features=f"{R}/features.txt",
    output:
        cells=f"{R}/cellstore/{{plate}}.npy",
        wells=f"{R}/cellstore/{{plate}}.wells.parquet",
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
        "--out-cells {output.cells:q} --out-wells {output.wells:q} --plate {wildcards.plate:q} "
        "--params {params.settings:q} 2> {log:q}"


rule train:
    input:
        cells=expand(f"{R}/cellstore/{{plate}}.npy", plate=TRAIN_PLATES),
        wells=expand(f"{R}/cellstore/{{plate}}.wells.parquet", plate=TRAIN_PLATES),
        features=f"{R}/features.txt",
    output:
        model=f"{R}/model/model.pt",
        history=report(
            f"{R}/model/training_log.csv",
            caption="../report/training_log.rst",
            category="Training",
        ),
    params:
        plates=TRAIN_PLATES,
        settings=settings(
            train=TRAIN_SETTINGS,
            **COMPOUND_SPLIT,
            normalization=NORMALIZATION,
            **ANNOTATION,
        ),
    log:
        f"{R}/logs/train.log",
    benchmark:
        f"{R}/benchmarks/train.tsv"
    threads: config["train"]["threads"]
    resources:
        mem_mb=mem_from_input(factor=2, floor=2000),  # cell stores are memory-mapped
        runtime=lambda w, attempt: 240 * attempt,  # set by epochs, model size and device more than by input
        **GPU,
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg train --plate-names {params.plates:q} --cells {input.cells:q} --wells {input.wells:q} "
        "--features {input.features:q} "
        "--out-model {output.model:q} --out-log {output.history:q} --threads {threads} "
        "--params {params.settings:q} 2> {log:q}"
