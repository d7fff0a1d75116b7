"""The Gradio page: five tabs over the project's folders (Runs, Data, Evaluation, Chat, Launch).

Each handler is a plain method of ``Studio`` (tested without a browser); ``build_app`` wires them to Gradio, one
method of ``_Page`` per tab.
A handler never lets an exception reach Gradio: a damaged file, a run deleted while shown or a model that does
not load becomes a line in the tab's status box, and the server keeps serving.
"""
from __future__ import annotations

import functools
import shlex
import traceback
from pathlib import Path
from typing import Callable, Sequence

from utils.common.errors import UserError
from utils.studio import chat, curves, data_view, evals, launch, runs

REFRESH_S = 3.0
"""How often the Runs and Launch tabs re-read what changed (new metrics bytes, new log bytes)."""


def _message(err: BaseException) -> str:
    if isinstance(err, UserError):
        return f"⚠️ {err}"
    where = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"⚠️ {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}{at}"


def guarded(outputs: Sequence):
    """Run the handler; on any error keep the other ``outputs`` (the components it writes, in order) as they are
    and put the message in the last one."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # the page must outlive any bad file or model
                import gradio as gr

                return tuple([gr.skip()] * (len(outputs) - 1) + [_message(err)])
        return inner
    return wrap


class Studio:
    """What the page reads: the project root, its checkpoints/ and data/sft_processed/, and the caches."""

    def __init__(self, project_root: Path, checkpoints: Path | None = None, data: Path | None = None,
                 python: str | None = None) -> None:
        self.root = Path(project_root).resolve()
        self.checkpoints = Path(checkpoints or self.root / "checkpoints").resolve()
        self.data = Path(data or self.root / "data" / "sft_processed").resolve()
        self.python = python
        self.curves = curves.CurveCache()
        self.examples = data_view.ExampleBrowser()
        self.models = chat.ModelCache()
        self.launched: list[launch.Launched] = []
        self._log_offsets: dict[str, int] = {}
        self._log_text: dict[str, str] = {}
        self._curves_seen: tuple = ()

    # ------------------------------------------------------------------ runs
    def run_list(self) -> list[runs.Run]:
        return runs.discover(self.checkpoints)

    def runs_table(self) -> tuple[list[list], list[str]]:
        found = self.run_list()
        return runs.overview_rows(found), [r.name for r in found]

    def run_details(self, selected: list[str]) -> str:
        if not selected:
            return "Pick one or more runs above to see their details and curves."
        parts = []
        for name in selected:
            run = runs.read_run(Path(name))
            parts.append(runs.describe(run) if run else f"### {name}\n\n⚠️ no longer there (deleted or moved)")
        return "\n\n".join(parts)

    def run_curves(self, selected: list[str], only_changes: bool = False):
        """(figure, latest-values rows, messages) for the selected runs; only new metrics bytes are read.
        With ``only_changes``, None when neither the selection nor any run's metrics changed (nothing to redraw)."""
        tails = {name: self.curves.get(Path(name)) for name in selected or []}
        seen = tuple((name, t.offset, len(t.messages), Path(name).exists()) for name, t in tails.items())
        if only_changes and seen == self._curves_seen:
            return None
        self._curves_seen = seen
        notes = [m for t in tails.values() for m in t.messages[-5:]]
        missing = [n for n in selected or [] if not Path(n).exists()]
        notes += [f"{n}: no longer there (deleted or moved)" for n in missing]
        return curves.plot_runs(tails), curves.latest_rows(tails), "\n".join(f"⚠️ {m}" for m in notes)

    # ------------------------------------------------------------------ data
    def corpora(self) -> list[str]:
        return [str(p) for p in data_view.find_corpora(self.data)]

    def corpus(self, path: str):
        if not path:
            return "No prepared corpus under " + str(self.data), [], [], [], None, 0, ""
        summary = data_view.corpus_summary(Path(path))
        count = data_view.num_examples(Path(path), "train")
        return (data_view.summary_markdown(summary), summary["splits"], summary["sources"], summary["drops"],
                summary["histogram"], count, "")

    def example(self, path: str, split: str, index) -> tuple[list, str, str]:
        if not path:
            return [], "", ""
        segments, caption = self.examples.render(Path(path), split, int(index or 0))
        return segments, caption, ""

    # ------------------------------------------------------------------ evaluation
    def reports(self) -> list[str]:
        return [str(p) for p in evals.find_reports(self.checkpoints)]

    def report(self, path: str):
        if not path:
            return "No evaluation report under " + str(self.checkpoints), [], [], [], [], [], ""
        report = evals.load_report(Path(path))
        return (evals.header_markdown(report, Path(path)), evals.metric_rows(report), evals.family_rows(report),
                evals.source_rows(report), evals.plots(Path(path)), evals.generations(Path(path)), "")

    # ------------------------------------------------------------------ chat
    def model_list(self) -> list[str]:
        return [str(p) for p in chat.find_models(self.checkpoints)]

    def chat(self, model: str, message: str, history: list, base_history: list, with_base: bool, system: str,
             max_new_tokens, temperature, top_p):
        """Stream (history, base history, status) while the reply (and the base's) is generated."""
        if not model:
            raise UserError("pick a model first")
        if not (message or "").strip():
            raise UserError("type a message first")
        settings = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))
        loaded = self.models.get(model)
        history = list(history or []) + [{"role": "user", "content": message}]
        messages = chat.to_messages(history[:-1], message, system)
        reply = ""
        for reply in chat.stream_reply(loaded, messages, **settings):
            yield history + [{"role": "assistant", "content": reply}], base_history, f"{loaded.note}; generating"
        history = history + [{"role": "assistant", "content": reply}]
        status = loaded.note
        if with_base:
            base_path = chat.base_of(Path(model))
            if not base_path:
                yield history, base_history, status + "; no base model recorded for this model"
                return
            base = self.models.get(base_path, tokenizer_dir=model)
            base_history = list(base_history or []) + [{"role": "user", "content": message}]
            base_reply = ""
            for base_reply in chat.stream_reply(base, chat.to_messages(base_history[:-1], message, system),
                                                **settings):
                yield history, base_history + [{"role": "assistant", "content": base_reply}], status
            base_history = base_history + [{"role": "assistant", "content": base_reply}]
            status += f"; base {base_path}"
        if not reply.strip():
            status += "; the reply is empty or only whitespace (an untrained or tiny model often ends at once)"
        yield history, base_history, status

    # ------------------------------------------------------------------ launch
    def configs(self, stage: str) -> list[str]:
        return launch.shipped_configs(self.root, stage) if stage in launch.STAGES else []

    def preview(self, *fields) -> str:
        request = launch.StageRequest(*fields)
        return "`" + shlex.join(launch.build_argv(request, self.python or "python", self.root)) + "`"

    def start(self, *fields) -> tuple[str, str]:
        request = launch.StageRequest(*fields)
        started = launch.launch(request, self.root, *([self.python] if self.python else []))
        self.launched.append(started)
        return (f"started pid {started.pid}, output in `{started.log}`:\n\n`{started.command}`\n\n"
                "It runs on when the studio closes; its run shows under Runs.", "")

    def launch_log(self) -> str:
        """The latest launch's log (new bytes only), with whether it still runs."""
        if not self.launched:
            return ""
        last = self.launched[-1]
        key = str(last.log)
        text, self._log_offsets[key] = launch.read_log(last.log, self._log_offsets.get(key, 0))
        self._log_text[key] = (self._log_text.get(key, "") + text)[-200_000:]
        alive = launch.is_alive(last.pid)
        state = f"[pid {last.pid} {'running' if alive else 'ended'}]"
        return launch.tail_text(self._log_text[key]) + "\n" + state


def build_app(studio: Studio):
    """The Gradio Blocks of the studio."""
    import gradio as gr

    with gr.Blocks(title="SFT Studio") as app:
        gr.Markdown(f"# SFT Studio\n`{studio.root}` — runs under `{studio.checkpoints}`, "
                    f"corpora under `{studio.data}`")
        page = _Page(gr, app, studio, gr.Timer(REFRESH_S))
        for name, tab in (("Runs", page.runs), ("Data", page.data), ("Evaluation", page.evaluation),
                          ("Chat", page.chat), ("Launch", page.launch)):
            with gr.Tab(name):
                tab()
    return app


class _Page:
    """The page being built (Gradio, its Blocks, the studio and the refresh timer): one method per tab, each
    making its components and wiring their events."""

    def __init__(self, gr, app, studio: Studio, timer) -> None:
        self.gr, self.app, self.studio, self.timer = gr, app, studio, timer

    def grid(self, headers: list[str], label: str, elem_id: str, **extra):
        return self.gr.Dataframe(headers=headers, interactive=False, label=label, elem_id=elem_id, **extra)

    def load_choices(self, names: Callable[[], list[str]], dropdown, status) -> None:
        """On page load, ``dropdown`` offers ``names()`` with the first chosen."""
        def choices():
            found = names()
            return self.gr.update(choices=found, value=found[0] if found else None), ""

        outputs = [dropdown, status]
        self.app.load(guarded(outputs)(choices), None, outputs)

    def runs(self) -> None:
        gr, studio = self.gr, self.studio
        runs_status = gr.Markdown(elem_id="runs-status")
        table = self.grid(["run", "kind", "state", "step", "checkpoints"], "runs", "runs-table")
        pick = gr.Dropdown(label="runs to show and compare", multiselect=True, elem_id="runs-pick")
        refresh = gr.Button("refresh")
        plot = gr.Plot(label="curves", elem_id="runs-plot")
        latest = self.grid(["run", "step", "loss", "eval/loss", "lr", "tokens/s"], "latest values", "runs-latest")
        details = gr.Markdown(elem_id="runs-details")
        listed, shown = [table, pick, runs_status], [plot, latest, details, runs_status]

        @guarded(listed)
        def list_runs(current):
            rows, names = studio.runs_table()
            keep = [n for n in current or [] if n in names] or names[:1]
            return rows, gr.update(choices=names, value=keep), ""

        @guarded(shown)
        def show_runs(selected, only_changes=False):
            found = studio.run_curves(selected, only_changes)
            if found is None:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            figure, rows, notes = found
            return figure, rows, studio.run_details(selected), notes

        refresh.click(list_runs, pick, listed).then(show_runs, pick, shown)
        self.app.load(list_runs, pick, listed).then(show_runs, pick, shown)
        pick.input(show_runs, pick, shown)
        self.timer.tick(lambda selected: show_runs(selected, True), pick, shown)

    def data(self) -> None:
        gr, studio = self.gr, self.studio
        data_status = gr.Markdown(elem_id="data-status")
        corpus = gr.Dropdown(label="prepared corpus", elem_id="data-corpus")
        summary = gr.Markdown(elem_id="data-summary")
        splits = self.grid(data_view.SPLIT_HEADERS, "splits", "data-splits")
        sources = self.grid(data_view.SOURCE_HEADERS, "mixture", "data-sources")
        drops = self.grid(data_view.DROP_HEADERS, "drops by reason", "data-drops")
        histogram = gr.Image(label="tokens per example", type="filepath", elem_id="data-histogram")
        with gr.Row():
            split = gr.Radio(["train", "val"], value="train", label="split")
            index = gr.Number(value=0, precision=0, minimum=0, label="example")
            count = gr.Number(value=0, precision=0, label="examples in train", interactive=False)
        caption = gr.Markdown(elem_id="data-caption")
        example = gr.HighlightedText(label="as the model sees it; trained tokens highlighted",
                                     color_map={"trained": "#f5b041"}, elem_id="data-example", show_legend=True)

        self.load_choices(studio.corpora, corpus, data_status)
        corpus_outputs = [summary, splits, sources, drops, histogram, count, data_status]
        corpus.change(guarded(corpus_outputs)(studio.corpus), corpus, corpus_outputs)
        example_outputs = [example, caption, data_status]
        for trigger in (corpus.change, split.change, index.change):
            trigger(guarded(example_outputs)(studio.example), [corpus, split, index], example_outputs)

    def evaluation(self) -> None:
        gr, studio = self.gr, self.studio
        eval_status = gr.Markdown(elem_id="eval-status")
        report = gr.Dropdown(label="evaluation report", elem_id="eval-report")
        header = gr.Markdown(elem_id="eval-header")
        metrics = self.grid(evals.METRIC_HEADERS, "metrics", "eval-metrics")
        families = self.grid(evals.FAMILY_HEADERS, "per task family", "eval-families")
        retention = self.grid(evals.SOURCE_HEADERS, "validation loss per source (retention)", "eval-sources")
        gallery = gr.Gallery(label="plots", columns=3, elem_id="eval-plots")
        generated = self.grid(evals.GENERATION_HEADERS, "generations, tuned beside base", "eval-generations",
                              wrap=True)

        self.load_choices(studio.reports, report, eval_status)
        outputs = [header, metrics, families, retention, gallery, generated, eval_status]
        report.change(guarded(outputs)(studio.report), report, outputs)

    def chat(self) -> None:
        gr, studio = self.gr, self.studio
        chat_status = gr.Markdown(elem_id="chat-status")
        with gr.Row():
            model = gr.Dropdown(label="model (final/ or export)", elem_id="chat-model", scale=3)
            with_base = gr.Checkbox(label="base model beside it", value=False)
        system = gr.Textbox(label="system prompt", lines=1)
        with gr.Row():
            max_new = gr.Slider(1, 1024, value=64, step=1, label="max new tokens")
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)",
                                    elem_id="chat-temperature")
            top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="top p")
        with gr.Row():
            tuned_box = gr.Chatbot(label="model", elem_id="chat-tuned", height=320)
            base_box = gr.Chatbot(label="base model", elem_id="chat-base", height=320)
        message = gr.Textbox(label="message", elem_id="chat-message")
        send = gr.Button("send", elem_id="chat-send")
        clear = gr.Button("clear")

        def talk(*args):
            try:
                yield from studio.chat(*args)
            except Exception as err:  # a model that fails to load is a message, not a dead page
                yield gr.skip(), gr.skip(), _message(err)

        self.load_choices(studio.model_list, model, chat_status)
        inputs = [model, message, tuned_box, base_box, with_base, system, max_new, temperature, top_p]
        outputs = [tuned_box, base_box, chat_status]
        send.click(talk, inputs, outputs)
        message.submit(talk, inputs, outputs)
        clear.click(lambda: ([], [], ""), None, outputs)

    def launch(self) -> None:
        gr, studio = self.gr, self.studio
        launch_status = gr.Markdown(elem_id="launch-status")
        stage = gr.Dropdown(list(launch.STAGES), value="sft", label="stage", elem_id="launch-stage")
        config = gr.Dropdown(label="config (shipped, or type a path)", allow_custom_value=True,
                             elem_id="launch-config")
        out_dir = gr.Textbox(label="output dir", elem_id="launch-output")
        tok = gr.Textbox(label="tokenizer path", value="checkpoints/tokenizer/spm8k_demo")
        model_path = gr.Textbox(label="model path", elem_id="launch-model")
        data_dirs = gr.Textbox(label="data dirs (space-separated)", elem_id="launch-data")
        base_path = gr.Textbox(label="base model path (evaluation)")
        eval_set = gr.Textbox(label="eval set (evaluation)")
        extra = gr.Textbox(label="more flags", placeholder="--max_steps 20 --overwrite_output_dir")
        command = gr.Markdown(elem_id="launch-command")
        go = gr.Button("start", elem_id="launch-start")
        log = gr.Textbox(label="output", lines=16, max_lines=16, autoscroll=True, elem_id="launch-log")
        fields = [stage, out_dir, config, tok, model_path, data_dirs, base_path, eval_set, extra]
        configs = [config, launch_status]

        @guarded(configs)
        def stage_configs(name):
            found = studio.configs(name)
            return gr.update(choices=found, value=found[0] if found else ""), ""

        def preview(*values):
            try:
                return studio.preview(*values)
            except Exception as err:  # an incomplete form shows what is missing
                return _message(err)

        stage.change(stage_configs, stage, configs)
        self.app.load(stage_configs, stage, configs)
        for field in fields:
            field.change(preview, fields, command)
        started, logged = [command, launch_status], [log, launch_status]
        go.click(guarded(started)(studio.start), fields, started)
        self.timer.tick(guarded(logged)(lambda: (studio.launch_log(), "")), None, logged)
