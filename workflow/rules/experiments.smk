# The model-capacity experiments (experiments/*.yaml): toy classes with equal means and different
# covariances. Each toy run is a "plate" of its own (the sphering preset makes one run per epsilon):
# its training data is packed, trained on, embedded and aggregated, and evaluated by the screen
# workflow's own rules, given the toy's files.


rule toy_data:
    output:
        train=f"{TOY}/{{plate}}/train.parquet",
        validation=f"{TOY}/{{plate}}/validation.parquet",
        features=f"{TOY}/{{plate}}/features.txt",
        figure=f"{TOY}/{{plate}}/classes.png",
    params:
        settings=toy_settings,
    log:
        f"{R}/logs/toy_data/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/toy_data/{{plate}}.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/plots.yaml"
    shell:
        "python -m cytoagg toy-data --plate {wildcards.plate:q} --out-train {output.train:q} --out-validation {output.validation:q} "
        "--out-features {output.features:q} --out-figure {output.figure:q} --params {params.settings:q} 2> {log:q}"


use rule pack_cells as toy_pack_cells with:
    input:
        normalized=f"{TOY}/{{plate}}/train.parquet",
        features=f"{TOY}/{{plate}}/features.txt",
    output:
        directory(f"{TOY}/{{plate}}/cellstore"),
    log:
        f"{R}/logs/toy_pack_cells/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/toy_pack_cells/{{plate}}.tsv"
    resources:
        **SMALL,


use rule train as toy_train with:
    input:
        cell_stores=[f"{TOY}/{{plate}}/cellstore"],
        features=f"{TOY}/{{plate}}/features.txt",
    output:
        model=f"{TOY}/{{plate}}/model.pt",
        history=f"{TOY}/{{plate}}/training_log.csv",
    params:
        settings=train_settings(TOY_SPLIT),
    log:
        f"{R}/logs/toy_train/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/toy_train/{{plate}}.tsv"
    resources:
        mem_mb=2000,
        runtime=120,
        **GPU,


use rule embed as toy_embed with:
    input:
        normalized=f"{TOY}/{{plate}}/validation.parquet",
        model=f"{TOY}/{{plate}}/model.pt",
        mlp_on_mean=[],
    output:
        model=f"{TOY}/{{plate}}/profiles/model.parquet",
    log:
        f"{R}/logs/toy_embed/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/toy_embed/{{plate}}.tsv"
    resources:
        **SMALL,
        **GPU,


use rule aggregate as toy_aggregate with:
    input:
        normalized=f"{TOY}/{{plate}}/validation.parquet",
        features=f"{TOY}/{{plate}}/features.txt",
        covariance=[],
    output:
        **{b: f"{TOY}/{{plate}}/profiles/{b}.parquet" for b in BASELINES},
    log:
        f"{R}/logs/toy_aggregate/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/toy_aggregate/{{plate}}.tsv"
    resources:
        **SMALL,


use rule evaluate as toy_evaluate with:
    input:
        **{k: f"{TOY}/{{plate}}/profiles/{m}.parquet" for k, (m, p) in PROFILES.items()},
    output:
        **{k: f"{TOY}/{{plate}}/ap/{m}.parquet" for k, (m, p) in PROFILES.items()},
    log:
        f"{R}/logs/toy_evaluate/{{plate}}.log",
    benchmark:
        f"{R}/benchmarks/toy_evaluate/{{plate}}.tsv"
    resources:
        **SMALL,


rule toy_summary:
    input:
        **{m: [f"{TOY}/{r}/ap/{m}.parquet" for r in toy_runs()] for m in ("model", "mean")},
    output:
        md=f"{TOY}/results.md",
        csv=f"{TOY}/results.csv",
    log:
        f"{R}/logs/toy_summary.log",
    benchmark:
        f"{R}/benchmarks/toy_summary.tsv"
    threads: 1
    resources:
        **SMALL,
    conda:
        f"{ENVS}/tables.yaml"
    shell:
        f"python -m cytoagg toy-summary {named_file_args('--ap', ('model', 'mean'), 'input')} "
        "--out-md {output.md:q} --out-csv {output.csv:q} 2> {log:q}"
