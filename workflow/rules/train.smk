# The set model, trained once on the training plates' training compounds (GPU when present), from their
# cell stores. Skipped when train.checkpoint names an existing model.


rule train:
    input:
        cell_stores=expand(f"{R}/cellstore/{{plate}}", plate=TRAIN_PLATES),
        features=f"{R}/features.txt",
    output:
        model=f"{R}/model/model.pt",
        history=report(f"{R}/model/training_log.csv", caption="../report/training_log.rst", category="4. Training"),
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


# The mlp_on_mean control: the same network, loss, batches, epochs and checkpoint selection, trained on the
# training plates' well MEAN profiles instead of their cells (the CytoSummaryNet reviewers' control).
rule train_on_means:
    input:
        expand(f"{R}/profiles/mean/{{plate}}.parquet", plate=TRAIN_PLATES),
    output:
        model=f"{R}/controls/mlp_on_mean/model.pt",
        history=f"{R}/controls/mlp_on_mean/training_log.csv",
    params:
        settings=train_settings(COMPOUND_SPLIT),
    log:
        f"{R}/logs/train_on_means.log",
    benchmark:
        f"{R}/benchmarks/train_on_means.tsv"
    threads: config["train"]["threads"]
    resources:
        mem_mb=2000,
        runtime=lambda w, attempt: 60 * attempt,
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg train-on-means --profiles {input:q} --out-model {output.model:q} "
        "--out-log {output.history:q} --threads {threads} --params {params.settings:q} 2> {log:q}"
