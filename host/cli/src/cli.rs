//! The subcommands of `kiln` (clap definitions and their implementations).

use crate::catalog;
use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use kiln_runtime::chat::Message;
use kiln_runtime::engine::{Engine, EngineOptions, Event, Finish, Input, Request, SamplerSpec};
use kiln_runtime::harmony::HarmonyParser;
use kiln_runtime::model::{LoadOptions, Model};
use kiln_runtime::sampler::{builtin, SamplerModule};
use kiln_runtime::sampler::{random_seed, SamplingParams};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// Kiln: run LLMs (GGUF) on pluggable backends.
#[derive(Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
pub struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Generate text from a prompt (streams only the generated text to stdout).
    Run(RunArgs),
    /// Chat interactively using the model's chat template.
    Chat(ChatArgs),
    /// Print the token ids of TEXT as JSON.
    Tokenize(TokenizeArgs),
    /// Show a model file's metadata and tensor table.
    Inspect(InspectArgs),
    /// Download a model of the catalog (verified by sha256).
    Pull(PullArgs),
    /// List the catalog and which models are downloaded.
    List,
    /// Measure prompt and generation speed (like llama-bench), one or many sequences.
    Bench(crate::bench::BenchArgs),
    /// Score a text file (perplexity, as llama.cpp's llama-perplexity computes it).
    Perplexity(crate::perplexity::PerplexityArgs),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// List the backend libraries found, with their devices and scores (for a model with -m),
    /// or why each was refused.
    Backends(BackendsArgs),
}

/// Model and backend selection shared by the subcommands that run a model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model: a GGUF path or a catalog name (default: the catalog's default model, fetched on
    /// first use).
    #[arg(short, long)]
    pub model: Option<String>,
    /// Backend: a name (`cpu`) or a library path; default: the best usable one.
    #[arg(long)]
    pub backend: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: u32,
    /// Context size in tokens (default: the model's trained length, capped to fit in memory).
    #[arg(short = 'c', long = "ctx")]
    pub ctx: Option<u32>,
}

impl ModelArgs {
    /// Resolves the model to a local file (pulling a catalog model if needed).
    pub fn path(&self) -> Result<PathBuf> {
        let name = self.model.as_deref().unwrap_or(catalog::DEFAULT_MODEL);
        catalog::resolve(name, true)
    }

    /// Loads the model on the best backend for it (or the one asked for).
    pub fn load(&self) -> Result<Arc<Model>> {
        Model::load(
            &self.path()?,
            &LoadOptions {
                backend: self.backend.clone(),
                threads: self.threads,
            },
        )
    }
}

/// Sampling options (llama.cpp's defaults). Every token is chosen by a WebAssembly sampler:
/// by default these flags configure the built-in `chain` (`greedy` at temperature 0); with
/// `--sampler` they are refused (configure the module with `--sampler-config`), except `--seed`.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8, conflicts_with = "sampler")]
    pub temperature: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 40, conflicts_with = "sampler")]
    pub top_k: i32,
    /// Top-p (1.0 = off).
    #[arg(long, default_value_t = 0.95, conflicts_with = "sampler")]
    pub top_p: f32,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = 0.05, conflicts_with = "sampler")]
    pub min_p: f32,
    /// Repetition penalty (1.0 = off).
    #[arg(long, default_value_t = 1.0, conflicts_with = "sampler")]
    pub repeat_penalty: f32,
    /// Tokens the penalties look back at.
    #[arg(long, default_value_t = 64, conflicts_with = "sampler")]
    pub repeat_last_n: usize,
    /// Frequency penalty.
    #[arg(long, default_value_t = 0.0, conflicts_with = "sampler")]
    pub frequency_penalty: f32,
    /// Presence penalty.
    #[arg(long, default_value_t = 0.0, conflicts_with = "sampler")]
    pub presence_penalty: f32,
    /// Random seed (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sampler to use instead of the flags above: a built-in (greedy, chain, mirostat,
    /// constraint) or a WebAssembly file (sdk/sampler/ABI.md).
    #[arg(long, value_name = "NAME|FILE.wasm")]
    pub sampler: Option<String>,
    /// The sampler's configuration (conventionally JSON, at most 64 KiB), e.g. '{"tau":5}'
    /// for mirostat or '{"regex":"[0-9]+"}' for constraint.
    #[arg(long, value_name = "TEXT", requires = "sampler")]
    pub sampler_config: Option<String>,
    /// Time limit of each sampler call, in milliseconds of CPU time.
    #[arg(long, value_name = "MS", default_value_t = kiln_runtime::sampler::DEFAULT_DEADLINE_MS)]
    pub sampler_deadline_ms: u64,
}

/// The sampler chosen on the command line and the seed.
pub struct SamplerChoice {
    /// Module, configuration and deadline.
    pub spec: SamplerSpec,
    /// Seed of the sequence.
    pub seed: u64,
}

impl SamplingArgs {
    /// Loads the sampler these options choose.
    pub fn choice(&self) -> Result<SamplerChoice> {
        let params = self.params()?;
        if !(1..=crate::MAX_SAMPLER_DEADLINE_MS).contains(&self.sampler_deadline_ms) {
            bail!(
                "--sampler-deadline-ms must be between 1 and {} ms",
                crate::MAX_SAMPLER_DEADLINE_MS
            );
        }
        let (module, config) = match &self.sampler {
            Some(name) => {
                let module = match builtin::load(name) {
                    Some(m) => m?,
                    None => {
                        let path = std::path::Path::new(name);
                        if !path.is_file() {
                            bail!(
                                "--sampler {name}: no such file, and not a built-in sampler ({})",
                                builtin::names().join(", ")
                            );
                        }
                        SamplerModule::load_file(path)?
                    }
                };
                (module, self.sampler_config.clone().unwrap_or_default())
            }
            None => {
                let spec = SamplerSpec::from_params(&params)?;
                (
                    spec.module,
                    String::from_utf8_lossy(&spec.config).into_owned(),
                )
            }
        };
        Ok(SamplerChoice {
            spec: SamplerSpec {
                module,
                config: config.into_bytes(),
                deadline_ms: self.sampler_deadline_ms,
            },
            seed: params.seed,
        })
    }

    fn params(&self) -> Result<SamplingParams> {
        for (name, v) in [
            ("--temperature", self.temperature),
            ("--top-p", self.top_p),
            ("--min-p", self.min_p),
        ] {
            if !v.is_finite() || v < 0.0 {
                bail!("{name} must be a non-negative number, got {v}");
            }
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            bail!(
                "--repeat-penalty must be positive, got {}",
                self.repeat_penalty
            );
        }
        Ok(SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            penalty_last_n: self.repeat_last_n,
            seed: self.seed.unwrap_or_else(random_seed),
        })
    }
}

/// `kiln run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(short, long)]
    pub prompt: String,
    /// Tokens to generate (default: until end of generation or a full context).
    #[arg(short = 'n', long = "n-predict")]
    pub n_predict: Option<usize>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    /// With --chat, also print the model's reasoning (gpt-oss's analysis channel), dimmed
    /// on a terminal; by default only the answer is printed.
    #[arg(long, requires = "chat")]
    pub show_reasoning: bool,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Treat special-token text in the prompt (e.g. `<|im_start|>`) as plain text.
    #[arg(long)]
    pub no_special: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `kiln chat`.
#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    /// Also print the model's reasoning (gpt-oss's analysis channel), dimmed on a terminal;
    /// by default only the answer is printed.
    #[arg(long)]
    pub show_reasoning: bool,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "n-predict")]
    pub n_predict: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `kiln tokenize`.
#[derive(Args)]
pub struct TokenizeArgs {
    /// Model: a GGUF path or a catalog name.
    #[arg(short, long)]
    pub model: Option<String>,
    /// Text to tokenize.
    pub text: String,
    /// Treat special-token text as plain text.
    #[arg(long)]
    pub no_special: bool,
    /// Print each token's text too.
    #[arg(long)]
    pub pieces: bool,
}

/// `kiln inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// Model: a GGUF path or a catalog name.
    pub model: String,
    /// Print long arrays and every tensor.
    #[arg(long)]
    pub all: bool,
}

/// `kiln serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The model id clients use (`model` in requests; default: the catalog name or file stem).
    #[arg(short = 'a', long)]
    pub alias: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 = any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` (default: `$KILN_API_KEY` if set).
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sequences decoding at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: u32,
    /// Requests that may wait for a slot before new ones get 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Most tokens one step evaluates (decoding rows first, then prompt chunks).
    #[arg(short = 'b', long, default_value_t = 256)]
    pub batch: u32,
    /// Time limit of each sampler call, in milliseconds of CPU time.
    #[arg(long, value_name = "MS", default_value_t = kiln_runtime::sampler::DEFAULT_DEADLINE_MS)]
    pub sampler_deadline_ms: u64,
    /// Seconds running requests may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10)]
    pub grace: u64,
}

/// `kiln backends`.
#[derive(Args)]
pub struct BackendsArgs {
    /// Score every backend for this model (a GGUF path or a catalog name).
    #[arg(short, long)]
    pub model: Option<String>,
}

/// `kiln pull`.
#[derive(Args)]
pub struct PullArgs {
    /// Catalog name (see `kiln list`).
    pub name: String,
    /// Download again even if present.
    #[arg(long)]
    pub force: bool,
}

/// Runs the parsed command.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => run(a),
        Command::Chat(a) => chat(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Inspect(a) => crate::inspect::inspect(&catalog::resolve(&a.model, false)?, a.all),
        Command::Pull(a) => {
            let p = catalog::pull(&a.name, a.force)?;
            println!("{}", p.display());
            Ok(())
        }
        Command::List => list(),
        Command::Bench(a) => crate::bench::bench(a),
        Command::Perplexity(a) => crate::perplexity::perplexity(a),
        Command::Serve(a) => serve(a),
        Command::Backends(a) => backends(a),
    }
}

/// Prints the statistics line of a finished request to stderr.
fn print_stats(
    model: &Model,
    engine: &Engine,
    finish: &Finish,
    usage: &kiln_runtime::engine::Usage,
    t: &kiln_runtime::engine::Timings,
) {
    let rate = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    let evaluated = usage.prompt_tokens - usage.cached_tokens;
    let cached = if usage.cached_tokens > 0 {
        format!(" ({} cached)", usage.cached_tokens)
    } else {
        String::new()
    };
    // The first generated token comes with the prompt; the rate counts the others.
    let gen_rate = rate(usage.completion_tokens.saturating_sub(1), t.gen_ms);
    eprintln!(
        "\n[kiln] load {:.0} ms | prompt {} tok{cached}, {:.1} tok/s | generation {} tok, {:.1} tok/s | {} | backend {} on {} | stop: {}",
        model.load_ms,
        usage.prompt_tokens,
        rate(evaluated, t.prompt_ms),
        usage.completion_tokens,
        gen_rate,
        kv_line(engine),
        model.backend,
        model.device,
        describe_stop(finish)
    );
}

fn describe_stop(f: &Finish) -> String {
    match f {
        Finish::ContextFull => "context full (raise --ctx)".into(),
        other => other.describe(),
    }
}

fn kv_line(engine: &Engine) -> String {
    let o = engine.options();
    let per_token = engine.model().backend_model.info().kv_bytes_per_token;
    format!(
        "ctx {}, KV cache {:.1} MiB",
        o.n_ctx,
        (per_token * u64::from(o.n_ctx) * u64::from(o.n_slots)) as f64 / (1 << 20) as f64
    )
}

/// How the generated text of a chat is shown.
#[derive(Clone, Copy, Debug, Default)]
struct ChatView {
    /// The model writes harmony channels: print the answer, hold the reasoning apart.
    harmony: bool,
    /// Print the reasoning too.
    show_reasoning: bool,
}

/// Writes generated text to stdout: the answer as it comes, the reasoning (when shown)
/// dimmed on a terminal, plain otherwise, a blank line between them.
struct Printer<W: Write> {
    out: W,
    tty: bool,
    view: ChatView,
    parser: Option<HarmonyParser>,
    /// What was printed last: 0 nothing, 1 reasoning, 2 answer.
    last: u8,
    /// The answer's text (what a chat keeps as the assistant's turn).
    reply: String,
}

impl<W: Write> Printer<W> {
    /// A printer to `out` (`tty`: a terminal, where reasoning is dimmed).
    fn new(out: W, tty: bool, view: ChatView) -> Self {
        Printer {
            out,
            tty,
            view,
            parser: view.harmony.then(HarmonyParser::new),
            last: 0,
            reply: String::new(),
        }
    }

    /// Writes `bytes`; `false` when stdout is a closed pipe.
    fn write(&mut self, bytes: &[u8]) -> Result<bool> {
        match self.out.write_all(bytes).and_then(|_| self.out.flush()) {
            Ok(()) => Ok(true),
            // A closed pipe (e.g. `| head`) just ends the generation.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn reasoning(&mut self, text: &str) -> Result<bool> {
        if text.is_empty() || !self.view.show_reasoning {
            return Ok(true);
        }
        self.last = 1;
        if self.tty {
            self.write(format!("\x1b[2m{text}\x1b[0m").as_bytes())
        } else {
            self.write(text.as_bytes())
        }
    }

    fn answer(&mut self, text: &str) -> Result<bool> {
        if text.is_empty() {
            return Ok(true);
        }
        if self.last == 1 && !self.write(b"\n\n")? {
            return Ok(false);
        }
        self.last = 2;
        self.reply.push_str(text);
        self.write(text.as_bytes())
    }

    /// Adds generated text (`last`: the end of the stream).
    fn push(&mut self, text: &str, last: bool) -> Result<bool> {
        let Some(p) = &mut self.parser else {
            return self.answer(text);
        };
        let mut d = p.push(text);
        if last {
            let f = p.finish();
            d.reasoning.push_str(&f.reasoning);
            d.content.push_str(&f.content);
        }
        Ok(self.reasoning(&d.reasoning)? && self.answer(&d.content)?)
    }
}

/// Streams one request's text to stdout; returns how it ended (and the reply's text: the
/// answer alone for a model that reasons in harmony channels).
fn stream(engine: &Engine, req: Request, view: ChatView) -> Result<(Finish, String)> {
    let handle = engine.submit(req)?;
    let out = std::io::stdout().lock();
    let tty = std::io::IsTerminal::is_terminal(&out);
    let mut p = Printer::new(out, tty, view);
    while let Some(ev) = handle.recv() {
        match ev {
            Event::Token { text, .. } => {
                if !p.push(&text, false)? {
                    handle.cancel();
                }
            }
            Event::Done {
                finish,
                text,
                usage,
                timings,
            } => {
                p.push(&text, true)?;
                let _ = writeln!(p.out);
                let reply = std::mem::take(&mut p.reply);
                drop(p);
                if let Finish::Error(e) = &finish {
                    bail!("{e}");
                }
                print_stats(engine.model(), engine, &finish, &usage, &timings);
                return Ok((finish, reply));
            }
        }
    }
    bail!("the engine stopped before the request finished")
}

fn run(a: RunArgs) -> Result<()> {
    let choice = a.sampling.choice()?;
    let model = a.model.load()?;
    let n_ctx = model.context_size(a.model.ctx, 1)?;
    let engine = Engine::start(model, EngineOptions::single(n_ctx))?;
    tracing::info!("{}", kv_line(&engine));
    let input = if a.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s.clone()));
        }
        msgs.push(Message::new("user", a.prompt.clone()));
        Input::Chat(msgs)
    } else {
        Input::Text {
            text: a.prompt.clone(),
            parse_special: !a.no_special,
        }
    };
    let mut req = Request::new(input, choice.spec);
    req.seed = choice.seed;
    req.max_tokens = a.n_predict;
    req.ignore_eos = a.ignore_eos;
    let view = ChatView {
        harmony: a.chat && engine.model().tokenizer.uses_harmony(),
        show_reasoning: a.show_reasoning,
    };
    warn_no_reasoning(&view);
    stream(&engine, req, view)?;
    Ok(())
}

/// `--show-reasoning` on a model without a reasoning channel has nothing to show: say so
/// rather than ignore the flag.
fn warn_no_reasoning(view: &ChatView) {
    if view.show_reasoning && !view.harmony {
        eprintln!(
            "[kiln] --show-reasoning: this model keeps no separate reasoning (no harmony \
             channels); its whole reply is printed as the answer"
        );
    }
}

fn chat(a: ChatArgs) -> Result<()> {
    let choice = a.sampling.choice()?;
    let model = a.model.load()?;
    let n_ctx = model.context_size(a.model.ctx, 1)?;
    let engine = Engine::start(model, EngineOptions::single(n_ctx))?;
    let mut msgs: Vec<Message> = Vec::new();
    if let Some(s) = &a.system {
        msgs.push(Message::new("system", s.clone()));
    }
    let view = ChatView {
        harmony: engine.model().tokenizer.uses_harmony(),
        show_reasoning: a.show_reasoning,
    };
    warn_no_reasoning(&view);
    eprintln!(
        "[kiln] {} | {} | backend {} — type a message; /clear resets, /exit or Ctrl-D quits",
        engine.model().file.path.display(),
        kv_line(&engine),
        engine.model().backend
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/clear" => {
                msgs.retain(|m| m.role == "system");
                continue;
            }
            _ => {}
        }
        msgs.push(Message::new("user", line));
        // The engine reuses the cached conversation: only the new turn is evaluated.
        let mut req = Request::new(Input::Chat(msgs.clone()), choice.spec.clone());
        req.seed = choice.seed;
        req.max_tokens = a.n_predict;
        match stream(&engine, req, view) {
            Ok((finish, reply)) => {
                if finish == Finish::ContextFull {
                    eprintln!("[kiln] the context is full; /clear to start over");
                }
                msgs.push(Message::new("assistant", reply));
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                msgs.pop();
            }
        }
    }
}

fn serve(a: ServeArgs) -> Result<()> {
    if !(1..=crate::MAX_SAMPLER_DEADLINE_MS).contains(&a.sampler_deadline_ms) {
        bail!(
            "--sampler-deadline-ms must be between 1 and {} ms",
            crate::MAX_SAMPLER_DEADLINE_MS
        );
    }
    if a.parallel == 0 || a.parallel > 256 {
        bail!("--parallel must be between 1 and 256");
    }
    if a.api_key.as_ref().is_some_and(|k| k.trim().is_empty()) {
        bail!("--api-key must not be empty");
    }
    let name = a.model.model.as_deref().unwrap_or(catalog::DEFAULT_MODEL);
    let path = a.model.path()?;
    let model_id = if let Some(a) = &a.alias {
        if a.trim().is_empty() || a.len() > 256 {
            bail!("--alias must be 1 to 256 characters");
        }
        a.clone()
    } else if std::path::Path::new(name).is_file() {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_string())
    } else {
        name.to_string()
    };
    kiln_server::run(kiln_server::ServeOptions {
        model_path: path,
        model_id,
        backend: a.model.backend.clone(),
        threads: a.model.threads,
        host: a.host,
        port: a.port,
        api_key: a.api_key,
        parallel: a.parallel,
        ctx: a.model.ctx,
        queue: a.queue,
        batch: a.batch.max(a.parallel),
        sampler_deadline_ms: a.sampler_deadline_ms,
        grace: std::time::Duration::from_secs(a.grace),
    })
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let path = catalog::resolve(a.model.as_deref().unwrap_or(catalog::DEFAULT_MODEL), true)?;
    let file = kiln_runtime::model_file::ModelFile::open(&path)?;
    let tok = kiln_runtime::tokenizer::Tokenizer::from_gguf(file.gguf())?;
    let ids = tok.encode(&a.text, !a.no_special)?;
    if a.pieces {
        let rows: Vec<serde_json::Value> = ids
            .iter()
            .map(|&id| serde_json::json!({"id": id, "piece": String::from_utf8_lossy(tok.token_bytes(id))}))
            .collect();
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        println!("{}", serde_json::to_string(&ids)?);
    }
    Ok(())
}

fn list() -> Result<()> {
    println!("{:<38} {:<8} {:>9}  LOCAL", "NAME", "ARCH", "SIZE");
    for (e, local) in catalog::list()? {
        let mark = if e.name == catalog::DEFAULT_MODEL {
            " (default)"
        } else {
            ""
        };
        println!(
            "{:<38} {:<8} {:>6.0} MB  {}{}",
            e.name,
            e.arch,
            e.bytes as f64 / 1e6,
            local
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "-".into()),
            mark
        );
    }
    Ok(())
}

fn backends(a: BackendsArgs) -> Result<()> {
    use kiln_runtime::plugins::{self, sanitize};
    let found = plugins::discover();
    if found.is_empty() {
        let dirs: Vec<String> = plugins::search_paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        println!("no backend libraries found in {}", dirs.join(", "));
        return Ok(());
    }
    let file = match &a.model {
        Some(m) => Some(kiln_runtime::model_file::ModelFile::open(
            &catalog::resolve(m, false)?,
        )?),
        None => None,
    };
    if let Some(f) = &file {
        println!("model: {}", f.path.display());
    }
    let mut best: Option<(u32, String)> = None;
    for c in found {
        match c.outcome {
            Ok(b) => {
                println!(
                    "{} {} — {}",
                    b.desc.name, b.desc.version, b.desc.description
                );
                println!(
                    "  library: {} (ABI 2.{})",
                    c.path.display(),
                    b.lib.abi_minor()
                );
                println!("  score:   {} ({})", b.score, b.reason);
                if let Some(f) = &file {
                    let (s, why) = b.score_model(f.gguf());
                    println!("  model:   {s} ({why})");
                    if s > 0 && best.as_ref().is_none_or(|(bs, _)| s > *bs) {
                        best = Some((s, b.desc.name.clone()));
                    }
                }
                for d in &b.devices {
                    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                    // 0 free means unknown (the ABI's convention).
                    let free = if d.free_memory == 0 {
                        "free unknown".to_string()
                    } else {
                        format!("{:.1} GiB free", gib(d.free_memory))
                    };
                    println!(
                        "  device:  {} [{}] {:.1} GiB total, {free}",
                        sanitize(&d.name),
                        if d.is_gpu { "gpu" } else { "cpu" },
                        gib(d.total_memory),
                    );
                }
            }
            Err(why) => {
                println!("refused: {}", c.path.display());
                println!("  reason:  {why}");
            }
        }
    }
    if file.is_some() {
        match best {
            Some((_, name)) => println!("chosen for this model: {name}"),
            None => println!("no backend can run this model"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HARMONY: &[&str] = &[
        "<|channel|>analysis",
        "<|message|>Think",
        "ing.<|end|><|start|>assistant<|channel|>final<|message|>",
        "Answer",
        ".",
    ];

    /// What a printer writes for `pieces`, and the reply it keeps.
    fn print(view: ChatView, tty: bool, pieces: &[&str]) -> (String, String) {
        let mut p = Printer::new(Vec::new(), tty, view);
        for (i, piece) in pieces.iter().enumerate() {
            assert!(p.push(piece, i + 1 == pieces.len()).unwrap());
        }
        (String::from_utf8(p.out).unwrap(), p.reply)
    }

    #[test]
    fn harmony_answer_only_by_default() {
        let view = ChatView {
            harmony: true,
            show_reasoning: false,
        };
        let want = ("Answer.".to_string(), "Answer.".to_string());
        assert_eq!(print(view, false, HARMONY), want);
        assert_eq!(print(view, true, HARMONY), want);
    }

    #[test]
    fn harmony_reasoning_shown_on_request() {
        let view = ChatView {
            harmony: true,
            show_reasoning: true,
        };
        assert_eq!(
            print(view, false, HARMONY),
            ("Thinking.\n\nAnswer.".into(), "Answer.".into())
        );
        assert_eq!(
            print(view, true, HARMONY),
            (
                "\x1b[2mThink\x1b[0m\x1b[2ming.\x1b[0m\n\nAnswer.".into(),
                "Answer.".into()
            )
        );
    }

    #[test]
    fn other_models_print_everything() {
        let view = ChatView {
            harmony: false,
            show_reasoning: true,
        };
        let text = HARMONY.concat();
        assert_eq!(print(view, true, HARMONY), (text.clone(), text));
    }
}
