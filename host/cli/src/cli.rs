//! The subcommands of `kiln` (clap definitions and their implementations).

use crate::catalog;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use kiln_runtime::chat::{ChatTemplate, Message};
use kiln_runtime::engine::{Engine, GenOptions};
use kiln_runtime::sampler::{builtin, SamplerModule, SequenceSampler};
use kiln_runtime::sampler::{random_seed, SamplingParams};
use std::io::{BufRead, Write};
use std::path::PathBuf;

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
    /// Measure prompt and generation speed (like llama-bench).
    Bench(crate::bench::BenchArgs),
    /// List the backend libraries found, with their devices and scores, or why each was refused.
    Backends,
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

    /// Loads the model.
    pub fn load(&self) -> Result<Engine> {
        Engine::load(&self.path()?, self.backend.as_deref(), self.threads)
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

/// The sampler chosen on the command line: module, configuration, seed, deadline.
pub struct SamplerChoice {
    module: std::sync::Arc<SamplerModule>,
    config: Vec<u8>,
    seed: u64,
    deadline_ms: u64,
}

impl SamplerChoice {
    /// An instance for one sequence of `engine`'s model.
    pub fn instantiate(&self, engine: &Engine) -> Result<SequenceSampler> {
        engine.sampler(&self.module, &self.config, self.seed, self.deadline_ms)
    }
}

impl SamplingArgs {
    /// Loads the sampler these options choose.
    pub fn choice(&self) -> Result<SamplerChoice> {
        let params = self.params()?;
        if self.sampler_deadline_ms == 0 {
            bail!("--sampler-deadline-ms must be at least 1");
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
                let (name, config) = builtin::for_params(&params);
                let module = builtin::load(name).with_context(|| {
                    format!("this build of kiln has no built-in `{name}` sampler")
                })??;
                (module, config)
            }
        };
        Ok(SamplerChoice {
            module,
            config: config.into_bytes(),
            seed: params.seed,
            deadline_ms: self.sampler_deadline_ms,
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
        Command::Backends => backends(),
    }
}

fn template_for(engine: &Engine) -> Result<ChatTemplate> {
    match engine.tokenizer.chat_template() {
        Some(src) => ChatTemplate::new(src).context("the model's chat template is invalid"),
        None => Ok(ChatTemplate::fallback(engine.model.info().arch.as_str())),
    }
}

fn special_text(engine: &Engine, id: Option<u32>) -> String {
    id.and_then(|i| engine.tokenizer.token_text(i))
        .unwrap_or("")
        .to_string()
}

/// Tokenizes rendered chat text; a template that writes the BOS text itself must not get a
/// second BOS from the tokenizer.
fn encode_chat(engine: &Engine, text: &str) -> Result<Vec<u32>> {
    let mut ids = engine.tokenizer.encode(text, true)?;
    if let Some(bos) = engine.tokenizer.bos() {
        if ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
            ids.remove(0);
        }
    }
    Ok(ids)
}

fn print_stats(engine: &Engine, s: &kiln_runtime::engine::GenStats, kv_line: &str) {
    let rate = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    eprintln!(
        "\n[kiln] load {:.0} ms | prompt {} tok, {:.1} tok/s | generation {} tok, {:.1} tok/s | {} | backend {} on {} | stop: {}",
        engine.load_ms,
        s.prompt_tokens,
        rate(s.prompt_tokens, s.prompt_ms),
        s.gen_tokens,
        rate(s.gen_tokens, s.gen_ms),
        kv_line,
        engine.backend,
        engine.device,
        s.stop.describe()
    );
}

fn kv_line(n_ctx: u32, kv_bytes: u64) -> String {
    format!(
        "ctx {n_ctx}, KV cache {:.1} MiB",
        kv_bytes as f64 / (1 << 20) as f64
    )
}

fn run(a: RunArgs) -> Result<()> {
    let choice = a.sampling.choice()?;
    let engine = a.model.load()?;
    let n_ctx = engine.context_size(a.model.ctx)?;
    let mut ctx = engine.context(n_ctx)?;
    let (_, _, kv_bytes) = ctx.info()?;
    tracing::info!("{}", kv_line(n_ctx, kv_bytes));
    let prompt = if a.chat {
        let tpl = template_for(&engine)?;
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message {
                role: "system".into(),
                content: s.clone(),
            });
        }
        msgs.push(Message {
            role: "user".into(),
            content: a.prompt.clone(),
        });
        let bos = special_text(&engine, engine.tokenizer.bos());
        let eos = special_text(&engine, engine.tokenizer.eos());
        encode_chat(&engine, &tpl.render(&msgs, true, &bos, &eos)?)?
    } else {
        engine.tokenizer.encode(&a.prompt, !a.no_special)?
    };
    let mut sampler = choice.instantiate(&engine)?;
    let opts = GenOptions {
        n_predict: a.n_predict,
        ignore_eos: a.ignore_eos,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (_, stats) = engine.generate(&mut ctx, 0, &prompt, &mut sampler, &opts, &mut |piece| {
        match out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => Ok(true),
            // A closed pipe (e.g. `| head`) just ends the generation.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    })?;
    let _ = writeln!(out);
    print_stats(&engine, &stats, &kv_line(n_ctx, kv_bytes));
    Ok(())
}

fn chat(a: ChatArgs) -> Result<()> {
    let choice = a.sampling.choice()?;
    let engine = a.model.load()?;
    let n_ctx = engine.context_size(a.model.ctx)?;
    let mut ctx = engine.context(n_ctx)?;
    let (_, _, kv_bytes) = ctx.info()?;
    let tpl = template_for(&engine)?;
    let bos = special_text(&engine, engine.tokenizer.bos());
    let eos = special_text(&engine, engine.tokenizer.eos());
    let mut msgs: Vec<Message> = Vec::new();
    if let Some(s) = &a.system {
        msgs.push(Message {
            role: "system".into(),
            content: s.clone(),
        });
    }
    eprintln!(
        "[kiln] {} | {} | backend {} — type a message; /clear resets, /exit or Ctrl-D quits",
        engine.file.path.display(),
        kv_line(n_ctx, kv_bytes),
        engine.backend
    );
    let mut cached: Vec<u32> = Vec::new();
    let mut sampler = choice.instantiate(&engine)?;
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
                ctx.seq_clear(0)?;
                cached.clear();
                continue;
            }
            _ => {}
        }
        msgs.push(Message {
            role: "user".into(),
            content: line.to_string(),
        });
        let ids = encode_chat(&engine, &tpl.render(&msgs, true, &bos, &eos)?)?;
        // Reuse the cached prefix of the conversation; evaluate only what changed.
        let common = cached
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        ctx.seq_truncate(0, common as u32)?;
        cached.truncate(common);
        // The sampler sees the whole conversation as this reply's prompt.
        let primed = sampler.reset().map_err(anyhow::Error::from).and_then(|()| {
            ids[..common]
                .iter()
                .try_for_each(|&t| sampler.accept(t))
                .map_err(anyhow::Error::from)
        });
        if let Err(e) = primed {
            eprintln!("error: {e:#}");
            msgs.pop();
            continue;
        }
        let opts = GenOptions {
            n_predict: a.n_predict,
            ignore_eos: false,
        };
        let mut reply = String::new();
        let stdout = std::io::stdout();
        let result = engine.generate(
            &mut ctx,
            common,
            &ids[common..],
            &mut sampler,
            &opts,
            &mut |piece| {
                reply.push_str(piece);
                let mut o = stdout.lock();
                o.write_all(piece.as_bytes())?;
                o.flush()?;
                Ok(true)
            },
        );
        println!();
        match result {
            Ok((generated, stats)) => {
                // The KV cache holds the prompt and every generated token that was evaluated.
                cached = ids
                    .iter()
                    .chain(&generated)
                    .copied()
                    .take(stats.n_cached)
                    .collect();
                if stats.stop == kiln_runtime::engine::StopReason::ContextFull {
                    eprintln!("[kiln] the context is full; /clear to start over");
                }
                msgs.push(Message {
                    role: "assistant".into(),
                    content: reply,
                });
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                msgs.pop();
                ctx.seq_clear(0)?;
                cached.clear();
            }
        }
    }
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

fn backends() -> Result<()> {
    let found = kiln_runtime::plugins::discover();
    if found.is_empty() {
        let dirs: Vec<String> = kiln_runtime::plugins::search_paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        println!("no backend libraries found in {}", dirs.join(", "));
        return Ok(());
    }
    for c in found {
        match c.outcome {
            Ok(b) => {
                println!(
                    "{} {} — {}",
                    b.desc.name, b.desc.version, b.desc.description
                );
                println!("  library: {}", c.path.display());
                println!("  score:   {} ({})", b.score, b.reason);
                for d in &b.devices {
                    println!(
                        "  device:  {} [{}] {:.1} GiB total, {:.1} GiB free",
                        d.name,
                        if d.is_gpu { "gpu" } else { "cpu" },
                        d.total_memory as f64 / (1u64 << 30) as f64,
                        d.free_memory as f64 / (1u64 << 30) as f64
                    );
                }
            }
            Err(why) => {
                println!("refused: {}", c.path.display());
                println!("  reason:  {why}");
            }
        }
    }
    Ok(())
}
