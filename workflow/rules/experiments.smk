# The model-capacity experiments (experiments/*.yaml): toy classes with equal means and different
# covariances. One run per {run}: sphering makes one run per epsilon. Reuses the train, embed,
# aggregate and evaluate steps of the screen workflow on the toy "plates".


rule toy_data:
    output:
        train=f"{TOY}/{{run}}/train.parquet",
        validation=f"{TOY}/{{run}}/validation.parquet",
        features=f"{TOY}/{{run}}/features.txt",
        figure=f"{TOY}/{{run}}/classes.png",
    params:
        settings=toy_settings,
    log:
        f"{R}/logs/toy_data/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/toy_data/{{run}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg toy-data --out-train {output.train:q} --out-validation {output.validation:q} "
        "--out-features {output.features:q} --out-figure {output.figure:q} --params {params.settings:q} 2> {log:q}"


rule toy_pack_cells:
    input:
        normalized=f"{TOY}/{{run}}/train.parquet",
        features=f"{TOY}/{{run}}/features.txt",
    output:
        cells=f"{TOY}/{{run}}/cellstore/train.npy",
        wells=f"{TOY}/{{run}}/cellstore/train.wells.parquet",
    params:
        settings=settings(**ANNOTATION),
    log:
        f"{R}/logs/toy_pack_cells/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/toy_pack_cells/{{run}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg pack-cells --normalized {input.normalized:q} --features {input.features:q} "
        "--out-cells {output.cells:q} --out-wells {output.wells:q} --plate {wildcards.run:q} "
        "--params {params.settings:q} 2> {log:q}"


rule toy_train:
    input:
        cells=f"{TOY}/{{run}}/cellstore/train.npy",
        wells=f"{TOY}/{{run}}/cellstore/train.wells.parquet",
        features=f"{TOY}/{{run}}/features.txt",
    output:
        model=f"{TOY}/{{run}}/model.pt",
        history=f"{TOY}/{{run}}/training_log.csv",
    params:
        settings=settings(
            train=TRAIN_SETTINGS,
            **TOY_ANNOTATION,
        ),
    log:
        f"{R}/logs/toy_train/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/toy_train/{{run}}.tsv"
    threads: config["train"]["threads"]
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg train --plate-names {wildcards.run:q} --cells {input.cells:q} --wells {input.wells:q} "
        "--features {input.features:q} "
        "--out-model {output.model:q} --out-log {output.history:q} --threads {threads} --params {params.settings:q} 2> {log:q}"


rule toy_embed:
    input:
        cells=f"{TOY}/{{run}}/validation.parquet",
        model=f"{TOY}/{{run}}/model.pt",
    output:
        f"{TOY}/{{run}}/profiles/model.parquet",
    params:
        settings=settings(embedding=config["train"]["embedding"], device=config["train"]["device"], **ANNOTATION),
    log:
        f"{R}/logs/toy_embed/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/toy_embed/{{run}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/torch.yaml"
    shell:
        "python -m cytoagg embed --normalized {input.cells:q} --checkpoint {input.model:q} --out {output:q} "
        "--plate {wildcards.run:q} --params {params.settings:q} 2> {log:q}"


rule toy_mean:
    input:
        cells=f"{TOY}/{{run}}/validation.parquet",
        features=f"{TOY}/{{run}}/features.txt",
    output:
        f"{TOY}/{{run}}/profiles/mean.parquet",
    params:
        settings=settings(**ANNOTATION),
    log:
        f"{R}/logs/toy_mean/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/toy_mean/{{run}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg aggregate --normalized {input.cells:q} --features {input.features:q} --out {output:q} "
        "--method mean --plate {wildcards.run:q} --params {params.settings:q} 2> {log:q}"


rule toy_evaluate:
    input:
        f"{TOY}/{{run}}/profiles/{{method}}.parquet",
    output:
        f"{TOY}/{{run}}/ap/{{method}}.parquet",
    params:
        settings=settings(**ANNOTATION),
    log:
        f"{R}/logs/toy_evaluate/{{run}}/{{method}}.log",
    benchmark:
        f"{R}/benchmarks/toy_evaluate/{{run}}/{{method}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg evaluate --profiles {input:q} --out {output:q} --params {params.settings:q} 2> {log:q}"


rule toy_summary:
    input:
        ap=[f"{TOY}/{r}/ap/{m}.parquet" for r in toy_runs() for m in ("model", "mean")],
    output:
        md=f"{TOY}/results.md",
        csv=f"{TOY}/results.csv",
    params:
        runs=[r for r in toy_runs() for m in ("model", "mean")],
        methods=[m for r in toy_runs() for m in ("model", "mean")],
    log:
        f"{R}/logs/toy_summary.log",
    benchmark:
        f"{R}/benchmarks/toy_summary.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        "python -m cytoagg toy-summary --runs {params.runs:q} --methods {params.methods:q} --ap {input.ap:q} "
        "--out-md {output.md:q} --out-csv {output.csv:q} 2> {log:q}"
