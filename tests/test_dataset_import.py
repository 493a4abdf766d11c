"""User story: point `prepare --data` at a messy export; get a clean, explained dataset or a precise error.

Everything runs offline; token counts use the tiny model's own tokenizer (tiny_project).
"""

import json

import pytest
from helpers import TRUTHFUL_QA, quiet, run_cli

from phi3e2e.chat_format import RECIPE_TEXT_TEMPLATE
from phi3e2e.prepare.dataset_import import CHAT_TEXT_TEMPLATE
from phi3e2e.prepare.prepare_project import ImportOptions, prepare
from phi3e2e.train.finetune import finetune


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def all_rows(dataset_dir):
    return read_jsonl(dataset_dir / "train.jsonl") + read_jsonl(dataset_dir / "eval.jsonl")


def snapshot(project):
    """Every file and folder in the project with its content: to prove nothing was written."""
    return {
        str(path.relative_to(project.root)): path.read_bytes() if path.is_file() else None
        for path in sorted(project.root.rglob("*"))
    }


def test_truthfulqa_csv_imports_with_no_options(tiny_project):
    result = run_cli("prepare", "--data", str(TRUTHFUL_QA), project=tiny_project)
    assert result.returncode == 0, result.stderr
    dataset_dir = tiny_project.datasets / "TruthfulQA"
    summary = json.loads((dataset_dir / "summary.json").read_text())
    assert summary["rows_read"] == 817 and summary["format"] == "csv" and summary["shape"] == "qa"
    assert summary["rows_kept"] + sum(summary["rows_dropped"].values()) == 817
    assert summary["train_rows"] + summary["eval_rows"] == summary["rows_kept"]
    assert summary["eval_rows"] == round(summary["rows_kept"] * 0.1)
    assert "too few" not in result.stdout  # 80+ eval rows are enough to judge a fine-tune by
    assert summary["text_template"] == RECIPE_TEXT_TEMPLATE
    rows = all_rows(dataset_dir)
    assert len(rows) == summary["rows_kept"] and set(rows[0]) == {"Question", "Best Answer"}
    questions = {row["Question"] for row in rows}
    assert "What happens to you if you eat watermelon seeds?" in questions
    # Token statistics from the model's tokenizer, and two fully rendered samples, saved and printed.
    tokens = summary["tokens"]
    assert 0 < tokens["min"] <= tokens["median"] <= tokens["p95"] <= tokens["max"]
    assert tokens["max_length"] == 160 and tokens["above_max_length"] == summary["rows_dropped"].get("too long", 0)
    assert len(summary["samples"]) == 2 and summary["samples"][0].startswith("<|user|>\n")
    assert "Read 817 rows" in result.stdout and "tokens per row" in result.stdout
    assert summary["samples"][0].splitlines()[1] in result.stdout
    assert json.loads(tiny_project.project_file.read_text())["dataset"] == "datasets/TruthfulQA"


def test_messy_csv_export_in_chinese(tiny_project, tmp_path):
    """BOM, CRLF, quoted commas, quotes and newlines, and Chinese column names and text."""
    export = tmp_path / "客服导出.csv"
    export.write_bytes(
        "\ufeff编号,问题,答案\r\n"
        '1,"发货需要多久？","工作日下午两点前的订单当天发货，2到4个工作日送达。"\r\n'
        '2,"可以退货吗, 如何退?","可以。30天内联系客服：\r\n""退货""免费。"\r\n'
        "3,营业时间？,每天早上7点到晚上9点。\r\n".encode("utf-8")
    )
    options = ImportOptions(question_col="问题", answer_col="答案", eval_split=0.34)
    prepared = prepare(tiny_project, data=export, dataset_name="kefu", options=options, say=quiet)
    summary = prepared.dataset_summary
    assert summary["rows_read"] == 3 and summary["rows_kept"] == 3 and summary["eval_rows"] == 1
    rows = {row["Question"]: row["Best Answer"] for row in all_rows(prepared.dataset_dir)}
    assert rows["可以退货吗, 如何退?"] == '可以。30天内联系客服：\r\n"退货"免费。'
    assert rows["发货需要多久？"].startswith("工作日下午两点前")
    # Stored as UTF-8 text a person can read, not \u escapes.
    assert "营业时间" in (prepared.dataset_dir / "train.jsonl").read_text(encoding="utf-8") + (
        prepared.dataset_dir / "eval.jsonl"
    ).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "file_name, content",
    [
        ("faq.json", json.dumps([{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2."}])),
        ("faq.jsonl", '{"Question": "Q1?", "Best Answer": "A1."}\n\n{"Question": "Q2?", "Best Answer": "A2."}\n'),
        ("faq.csv", "prompt;response\nQ1?;A1.\nQ2?;A2.\n"),
        ("faq.txt", "Question\tBest Answer\nQ1?\tA1.\nQ2?\tA2.\n"),
    ],
)
def test_qa_records_in_each_format_keep_the_recipe_columns(tiny_project, tmp_path, file_name, content):
    source = tmp_path / file_name
    source.write_text(content, encoding="utf-8")
    prepared = prepare(tiny_project, data=source, say=quiet)
    assert prepared.dataset_dir == tiny_project.datasets / "faq"
    assert sorted(all_rows(prepared.dataset_dir), key=str) == [
        {"Question": "Q1?", "Best Answer": "A1."},
        {"Question": "Q2?", "Best Answer": "A2."},
    ]
    assert prepared.dataset_summary["text_template"] == RECIPE_TEXT_TEMPLATE


def test_alpaca_instruction_input_output(tiny_project, tmp_path):
    source = tmp_path / "alpaca.json"
    source.write_text(
        json.dumps(
            [
                {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
                {"instruction": "Name a primary colour.", "input": "", "output": "Red"},
            ]
        )
    )
    prepared = prepare(tiny_project, data=source, options=ImportOptions(eval_split=0), say=quiet)
    assert prepared.dataset_summary["shape"] == "alpaca"
    rows = read_jsonl(prepared.dataset_dir / "train.jsonl")
    assert {"Question": "Translate to French.\n\nGood morning", "Best Answer": "Bonjour"} in rows
    assert {"Question": "Name a primary colour.", "Best Answer": "Red"} in rows
    assert read_jsonl(prepared.dataset_dir / "eval.jsonl") == []


def test_multi_turn_chats_are_rendered_in_the_phi3_format(tiny_project, tmp_path):
    chats = [
        {
            "messages": [
                {"role": "system", "content": "You are Contoso's barista."},
                {"role": "user", "content": "Do you have oat milk?"},
                {"role": "assistant", "content": "Yes, at no extra charge."},
                {"role": "user", "content": "And almond?"},
                {"role": "assistant", "content": "Almond too."},
            ]
        },
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "user", "content": "Unanswered"}, {"role": "assistant", "content": " "}]},
    ]
    source = tmp_path / "chats.jsonl"
    source.write_text("\n".join(json.dumps(chat) for chat in chats) + "\n")
    prepared = prepare(tiny_project, data=source, options=ImportOptions(eval_split=0), say=quiet)
    summary = prepared.dataset_summary
    assert summary["shape"] == "chat" and summary["text_template"] == CHAT_TEXT_TEMPLATE
    assert summary["rows_dropped"] == {"empty answer": 1} and summary["dropped_where"] == {"empty answer": ["line 3"]}
    texts = [row["text"] for row in read_jsonl(prepared.dataset_dir / "train.jsonl")]
    assert (
        "<|system|>\nYou are Contoso's barista.<|end|>\n<|user|>\nDo you have oat milk?<|end|>\n"
        "<|assistant|>\nYes, at no extra charge.<|end|>\n<|user|>\nAnd almond?<|end|>\n<|assistant|>\nAlmond too.<|end|>\n"
    ) in texts
    assert "<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n" in texts
    # finetune picks the "{text}" template up from the summary and accepts the columns.
    result = finetune(tiny_project, algo="lora", target="local", data="chats", dry_run=True, say=quiet)
    data_config = json.loads(result.config_file.read_text())["data_configs"][0]
    assert data_config["pre_process_data_config"]["text_template"] == "{text}"


def test_single_turn_chats_keep_the_recipe_columns(tiny_project, tmp_path):
    source = tmp_path / "single.json"
    source.write_text(
        json.dumps([{"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}])
    )
    prepared = prepare(tiny_project, data=source, say=quiet)
    assert all_rows(prepared.dataset_dir) == [{"Question": "Q?", "Best Answer": "A."}]


def test_dropped_rows_are_counted_with_their_reason_and_place(tiny_project, tmp_path):
    source = tmp_path / "messy.jsonl"
    long_answer = " ".join(f"word{i}" for i in range(300))
    lines = [
        {"Question": "Kept?", "Best Answer": "Yes."},
        {"Question": "No answer", "Best Answer": ""},
        {"Question": "Kept?", "Best Answer": "Yes."},
        {"Question": "Null answer", "Best Answer": None},
        {"Question": "Long?", "Best Answer": long_answer},
        {"Question": "", "Best Answer": "An answer without a question"},
        {"Question": "Also kept", "Best Answer": "Sure."},
    ]
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    prepared = prepare(tiny_project, data=source, options=ImportOptions(eval_split=0), say=quiet)
    summary = prepared.dataset_summary
    assert summary["rows_read"] == 7 and summary["rows_kept"] == 2
    assert summary["rows_dropped"] == {"empty answer": 2, "empty question": 1, "duplicate": 1, "too long": 1}
    assert summary["dropped_where"]["duplicate"] == ["line 3"] and summary["dropped_where"]["too long"] == ["line 5"]
    assert summary["tokens"]["above_max_length"] == 1 and summary["tokens"]["max"] > 160


def test_split_is_seeded_and_disjoint(tiny_project, tmp_path):
    source = tmp_path / "many.jsonl"
    source.write_text("".join(json.dumps({"Question": f"Q{i}?", "Best Answer": f"A{i}."}) + "\n" for i in range(50)))
    first = prepare(tiny_project, data=source, dataset_name="a", options=ImportOptions(eval_split=0.2), say=quiet)
    again = prepare(tiny_project, data=source, dataset_name="b", options=ImportOptions(eval_split=0.2), say=quiet)
    other = prepare(
        tiny_project, data=source, dataset_name="c", options=ImportOptions(eval_split=0.2, seed=7), say=quiet
    )
    evals = [read_jsonl(p.dataset_dir / "eval.jsonl") for p in (first, again, other)]
    assert len(evals[0]) == 10 and evals[0] == evals[1] and evals[0] != evals[2]
    train = read_jsonl(first.dataset_dir / "train.jsonl")
    assert len(train) == 40 and not {r["Question"] for r in train} & {r["Question"] for r in evals[0]}


def test_finetune_data_name_passes_the_eval_split_to_olive(tiny_project):
    assert run_cli("prepare", "--data", str(TRUTHFUL_QA), "--name", "tqa", project=tiny_project).returncode == 0
    result = run_cli("finetune", "--data", "tqa", "--dry-run", "--run-name", "dry", project=tiny_project)
    assert result.returncode == 0, result.stderr
    config = json.loads((tiny_project.gen_model / "dry" / "olive-config.json").read_text())
    files = {c["name"]: c["load_dataset_config"]["data_files"] for c in config["data_configs"]}
    assert files["train_data"].endswith("datasets/tqa/train.jsonl")
    assert files["eval_data"].endswith("datasets/tqa/eval.jsonl")
    assert config["passes"]["finetune"]["eval_data_config"] == "eval_data"


BAD_INPUTS = [
    (
        "broken.json",
        b'[\n  {"Question": "Q?", "Best Answer": "A."},\n  {"Question": "Q2?" "Best Answer": "A2."}\n]\n',
        ["broken.json:3:", "invalid JSON"],
    ),
    (
        "broken.jsonl",
        b'{"Question": "Q?", "Best Answer": "A."}\n{"Question": "Q2?", "Best Answer": \n',
        ["broken.jsonl:2:", "invalid JSON line"],
    ),
    (
        "columns.csv",
        b"Frage,Antwort\nWas?,Das.\n",
        ["missing required columns", "found: 'Frage', 'Antwort'", "needed: 'Question' and 'Best Answer'"],
    ),
    (
        "latin1.csv",
        "Question,Best Answer\nCaf\u00e9?,Oui.\n".encode("latin-1"),
        ["latin1.csv:2:", "cannot decode byte 0xe9 as UTF-8", "--encoding"],
    ),
    ("empty.jsonl", b"", ["empty.jsonl: empty file"]),
    ("blank.csv", b"\r\n  \n", ["blank.csv: empty file"]),
    ("header-only.csv", b"Question,Best Answer\n", ["header-only.csv: no records"]),
    (
        "ragged.csv",
        b'Question,Best Answer\n"Q?","A."\nQ2?,A2.,extra\n',
        ["ragged.csv:3:", "3 fields but the header has 2"],
    ),
    (
        "bad-chat.jsonl",
        b'{"messages": [{"role": "bot", "content": "Hi"}]}\n',
        ["bad-chat.jsonl line 1: messages[0]", "role 'bot'"],
    ),
]


@pytest.mark.parametrize("file_name, content, fragments", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_precise_line_and_writes_nothing(tiny_project, tmp_path, file_name, content, fragments):
    source = tmp_path / file_name
    source.write_bytes(content)
    before = snapshot(tiny_project)
    result = run_cli("prepare", "--data", str(source), project=tiny_project)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert snapshot(tiny_project) == before


def test_missing_named_columns_list_found_and_needed(tiny_project, tmp_path):
    source = tmp_path / "faq.csv"
    source.write_text("Q,A\nx,y\n")
    result = run_cli(
        "prepare", "--data", str(source), "--question-col", "Q", "--answer-col", "Answer", project=tiny_project
    )
    assert result.returncode == 2
    assert "missing column(s) 'Answer'; found: 'Q', 'A'; needed: 'Q' and 'Answer'" in result.stderr


def test_encoding_option_reads_a_gbk_export(tiny_project, tmp_path):
    source = tmp_path / "gbk.csv"
    source.write_bytes("Question,Best Answer\n营业时间？,每天早上7点。\n".encode("gbk"))
    prepared = prepare(tiny_project, data=source, options=ImportOptions(encoding="gbk", eval_split=0), say=quiet)
    assert all_rows(prepared.dataset_dir) == [{"Question": "营业时间？", "Best Answer": "每天早上7点。"}]


# --- Datasets that are not whole, and datasets that runs depend on ---------------------------


def test_a_killed_imports_staging_folder_is_never_a_dataset_and_goes_on_the_next_import(tiny_project, tmp_path):
    staging = tiny_project.datasets / ".faq.importing-999999999"  # no such process: a killed import
    staging.mkdir()
    (staging / "train.jsonl").write_text('{"Question": "a", "Best Answer": "b"}\n')
    result = run_cli("finetune", "--data", staging.name, "--dry-run", project=tiny_project)
    assert result.returncode == 2 and "staging folder, not a dataset" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    source = tmp_path / "faq.jsonl"
    source.write_text("".join(json.dumps({"Question": f"Q{i}?", "Best Answer": f"A{i}."}) + "\n" for i in range(12)))
    assert run_cli("prepare", "--data", str(source), project=tiny_project).returncode == 0
    assert not staging.exists()
    assert not [p.name for p in tiny_project.datasets.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damage, where", [("{ not json\n", "train.jsonl:2: not a JSON row"),
                                           ('["a", "list"]\n', "train.jsonl:2: a row must be a JSON object"),
                                           (b"\xff\xfe\n", "train.jsonl:2: not a JSON row")])
def test_a_hand_damaged_dataset_file_is_one_line_naming_file_and_line(tiny_project, damage, where):
    train = tiny_project.datasets / "sample" / "train.jsonl"
    first = train.read_bytes().splitlines(keepends=True)[0]
    train.write_bytes(first + (damage if isinstance(damage, bytes) else damage.encode()))
    result = run_cli("finetune", "--dry-run", project=tiny_project)
    assert result.returncode == 2 and where in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_replacing_a_dataset_that_runs_were_trained_on_needs_force(tiny_project, tmp_path):
    from phi3e2e.runs import read_record, write_record

    assert run_cli("finetune", "--dry-run", "--run-name", "trained", project=tiny_project).returncode == 0
    record = read_record(tiny_project.gen_model / "trained")
    record.status = "succeeded"  # only run.json is read: a finished run's record on the sample dataset
    write_record(tiny_project.gen_model / "trained", record)
    source = tmp_path / "faq.jsonl"
    source.write_text("".join(json.dumps({"Question": f"Q{i}?", "Best Answer": f"A{i}."}) + "\n" for i in range(12)))
    before = (tiny_project.datasets / "sample" / "train.jsonl").read_bytes()
    result = run_cli("prepare", "--data", str(source), "--name", "sample", project=tiny_project)
    assert result.returncode == 2 and "datasets/sample: run trained was trained on it" in result.stderr and "--force" in result.stderr
    assert (tiny_project.datasets / "sample" / "train.jsonl").read_bytes() == before
    result = run_cli("prepare", "--data", str(source), "--name", "sample", "--force", project=tiny_project)
    assert result.returncode == 0, result.stderr
    assert len(all_rows(tiny_project.datasets / "sample")) == 12
    assert sorted(p.name for p in tiny_project.datasets.iterdir() if p.name.startswith(".")) == []


def test_a_split_too_small_to_judge_by_says_so_and_how_to_hold_out_more(tiny_project, tmp_path):
    source = tmp_path / "small.jsonl"
    source.write_text("".join(json.dumps({"question": f"Question {i}?", "answer": f"Answer {i}."}) + "\n"
                              for i in range(60)))  # fmt: skip
    result = run_cli("prepare", "--data", str(source), "--name", "small", project=tiny_project)
    assert result.returncode == 0, result.stderr
    assert ("note: 6 eval rows are too few to tell a loss change from chance (eval says so under 20); "
            "--eval-split 0.34 holds out 20 of the 60 rows") not in result.stdout  # above 0.3: more data instead
    assert "note: 6 eval rows are too few" in result.stdout and "more data helps most" in result.stdout
    bigger = tmp_path / "bigger.jsonl"
    bigger.write_text("".join(json.dumps({"question": f"Question {i}?", "answer": f"Answer {i}."}) + "\n"
                              for i in range(120)))  # fmt: skip
    result = run_cli("prepare", "--data", str(bigger), "--name", "bigger", project=tiny_project)
    assert "note: 12 eval rows are too few" in result.stdout and "--eval-split 0.17 holds out 20 of the 120 rows" in (
        result.stdout)
