# The set model, trained once on the training plates' training compounds (GPU when present).
# Skipped when train.checkpoint names an existing model.


rule train:
    input:
        plates=expand(f"{R}/normalized/{{plate}}.parquet", plate=TRAIN_PLATES),
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
        settings=lambda w: settings(
            train={k: v for k, v in config["train"].items() if k not in ("checkpoint", "threads", "embedding")},
            validation_compounds=config["compounds"]["validation"],
            split_seed=config["compounds"]["seed"],
            normalization=config["normalize"],
            **ANNOTATION,
        ),
    log:
        f"{R}/logs/train.log",
    benchmark:
        f"{R}/benchmarks/train.tsv"
    threads: config["train"]["threads"]
    resources:
        mem_mb=lambda w, input: input_mb(input, factor=3, floor=2000),
        runtime=240,
        gpu=1 if use_gpu() else 0,
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg train --plate-names {params.plates:q} --plates {input.plates:q} --features {input.features:q} "
        "--out-model {output.model:q} --out-log {output.history:q} --threads {threads} "
        "--params {params.settings:q} 2> {log:q}"
