# The set model, trained once on the training plates' training compounds (GPU when present), from their
# cell stores. Skipped when train.checkpoint names an existing model.


rule train:
    input:
        cell_stores=expand(f"{R}/cellstore/{{plate}}", plate=TRAIN_PLATES),
        features=f"{R}/features.txt",
    output:
        model=f"{R}/model/model.pt",
        history=report(f"{R}/model/training_log.csv", caption="../report/training_log.rst", category="Training"),
    params:
        settings=train_settings(COMPOUND_SPLIT),
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
        "python -m cytoagg train --cell-stores {input.cell_stores:q} --features {input.features:q} --out-model {output.model:q} "
        "--out-log {output.history:q} --threads {threads} --params {params.settings:q} 2> {log:q}"
