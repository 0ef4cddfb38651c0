//! The engine on a thread of its own: requests arrive on a channel, each with a channel its
//! events go back on; the loop steps the engine while work exists and sleeps on the channel
//! otherwise. An abort (a client that went away) frees the request's blocks at the next step; a
//! shutdown lets the running requests finish within a grace period, then aborts the rest.

use super::metrics::{Load, Metrics};
use crate::cli::engine_args::EngineArgs;
use crate::cli::loading::{LoadedModel, ModelTask};
use mla_rt::backend::Backend;
use mla_rt::engine::batch_engine::{Engine, NewToken};
use mla_rt::engine::request::{Request, RequestOutput};
use mla_rt::error::Result;
use mla_rt::model::AttentionForm;
use mla_rt::tokenizer::TextTokenizer;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// What a request hears back, tagged with its choice.
#[derive(Debug)]
pub enum Event {
    Token(NewToken),
    Done(RequestOutput),
    /// Refused by the engine (a request it can never serve), with the reason.
    Refused(String),
    /// Aborted by the server (shutting down, the engine failed), with the reason.
    Failed(String),
}

pub type EventSender = UnboundedSender<(usize, Event)>;

/// One choice of an HTTP request: `id` is the server's (unique per choice), `choice` its index
/// in the response.
pub struct Submission {
    pub id: u64,
    pub choice: usize,
    pub request: Request,
    pub events: EventSender,
}

pub enum Command {
    Submit(Submission),
    Abort(u64),
    /// Stop taking requests; abort what is still running after the grace period.
    Shutdown(Duration),
}

// The state: 0 while the model loads (Default), then READY, then STOPPED.
const READY: u8 = 1;
const STOPPED: u8 = 2;

/// What the HTTP side reads of the engine's thread.
#[derive(Default)]
pub struct Shared {
    state: AtomicU8,
    /// Why the model could not be loaded or the engine stopped, if it did.
    pub failure: Mutex<Option<String>>,
    /// Submissions sent but not yet taken by the engine's thread.
    pub queued: AtomicUsize,
    pub metrics: Metrics,
}

impl Shared {
    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    pub fn is_stopped(&self) -> bool {
        self.state.load(Ordering::Acquire) == STOPPED
    }

    /// Requests not yet running: on their way to the engine, or in its queue.
    pub fn waiting(&self) -> usize {
        self.queued.load(Ordering::Acquire) + self.metrics.load().waiting
    }

    pub fn stop(&self, failure: Option<String>) {
        if failure.is_some() {
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = failure;
        }
        self.state.store(STOPPED, Ordering::Release);
    }
}

/// The engine's thread's work, run by [`crate::cli::loading::ModelArgs::run`] once the model is
/// loaded on the device it names.
pub struct EngineTask {
    pub commands: Receiver<Command>,
    pub shared: Arc<Shared>,
    /// The tokenizer of the model the task loads (the HTTP side's, shared).
    pub tokenizer: Arc<TextTokenizer>,
    pub engine: EngineArgs,
    pub block_size: usize,
    pub attention: AttentionForm,
    pub cache_dtype: mla_rt::kv::cache_dtype::KvCacheDtype,
}

/// A request in the engine: its index there, its choice and where its events go.
struct Live {
    index: usize,
    choice: usize,
    events: EventSender,
}

impl ModelTask for EngineTask {
    type Output = ();

    fn run<B: Backend>(self, loaded: LoadedModel<B>) -> Result<()> {
        let config = &loaded.model.config;
        let (engine_config, plan) = self.engine.engine_config(
            &loaded.backend,
            config,
            self.block_size,
            self.attention,
            self.cache_dtype,
            crate::cli::engine_args::CacheDemand::AnyUpTo(config.max_position_embeddings()),
        )?;
        tracing::info!("{}", plan.summary());
        let mut engine = Engine::new(
            &loaded.model,
            &loaded.backend,
            Some(&self.tokenizer),
            engine_config,
        )?;
        if let Some(capture) = engine.capture_decode_graphs(engine_config.scheduler.max_num_seqs)? {
            tracing::info!("{capture}");
        }
        self.shared.state.store(READY, Ordering::Release);
        tracing::info!("model loaded from {}", loaded.dir.display());
        Looper {
            commands: self.commands,
            shared: &self.shared,
            live: HashMap::new(),
            by_index: HashMap::new(),
            deadline: None,
        }
        .run(&mut engine)
    }
}

struct Looper<'s> {
    commands: Receiver<Command>,
    shared: &'s Shared,
    live: HashMap<u64, Live>,
    by_index: HashMap<usize, u64>,
    deadline: Option<Instant>,
}

impl Looper<'_> {
    fn run<B: Backend>(mut self, engine: &mut Engine<'_, B>) -> Result<()> {
        loop {
            // Sleep on the channel while there is nothing to step.
            let first = match engine.has_unfinished() || self.deadline.is_some() {
                true => None,
                false => match self.commands.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return Ok(()), // the HTTP side is gone
                },
            };
            let more = std::iter::from_fn(|| self.commands.try_recv().ok());
            let commands: Vec<Command> = first.into_iter().chain(more).collect();
            for c in commands {
                self.command(engine, c);
            }
            if let Some(deadline) = self.deadline {
                if !engine.has_unfinished() || Instant::now() >= deadline {
                    self.fail_all(engine, "the server stopped before the request finished");
                    return Ok(());
                }
            }
            if engine.has_unfinished() {
                self.step(engine);
            }
            self.publish(engine);
        }
    }

    fn command<B: Backend>(&mut self, engine: &mut Engine<'_, B>, c: Command) {
        match c {
            Command::Submit(s) => {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                if self.deadline.is_some() {
                    let _ = s.events.send((
                        s.choice,
                        Event::Failed("the server is shutting down".into()),
                    ));
                    return;
                }
                match engine.add_request(s.request) {
                    Ok(index) => {
                        self.shared.metrics.accepted();
                        self.by_index.insert(index, s.id);
                        self.live.insert(
                            s.id,
                            Live {
                                index,
                                choice: s.choice,
                                events: s.events,
                            },
                        );
                    }
                    Err(e) => {
                        let _ = s.events.send((s.choice, Event::Refused(e.to_string())));
                    }
                }
            }
            Command::Abort(id) => self.abort(engine, id),
            Command::Shutdown(grace) => self.deadline = Some(Instant::now() + grace),
        }
    }

    fn abort<B: Backend>(&mut self, engine: &mut Engine<'_, B>, id: u64) {
        if let Some(live) = self.live.remove(&id) {
            self.by_index.remove(&live.index);
            engine.abort(live.index);
            self.shared.metrics.aborted();
        }
    }

    fn fail_all<B: Backend>(&mut self, engine: &mut Engine<'_, B>, why: &str) {
        for (_, live) in self.live.drain() {
            engine.abort(live.index);
            self.shared.metrics.aborted();
            let _ = live.events.send((live.choice, Event::Failed(why.into())));
        }
        self.by_index.clear();
    }

    /// One engine step; its tokens and finished requests to their requests. A request whose
    /// receiver is gone (its client disconnected) is aborted. A failed or panicking step fails
    /// every request in the engine, and the engine goes on with new ones.
    fn step<B: Backend>(&mut self, engine: &mut Engine<'_, B>) {
        let out = match catch_unwind(AssertUnwindSafe(|| engine.step())) {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                tracing::error!("engine step failed: {e}");
                return self.fail_all(engine, &format!("the engine failed: {e}"));
            }
            Err(_) => {
                tracing::error!("engine step panicked");
                return self.fail_all(engine, "the engine failed (a panic; see the server log)");
            }
        };
        let mut gone = Vec::new();
        for t in out.new_tokens {
            let Some((&id, live)) = self
                .by_index
                .get(&t.index)
                .and_then(|id| self.live.get_key_value(id))
            else {
                continue;
            };
            if live.events.send((live.choice, Event::Token(t))).is_err() {
                gone.push(id);
            }
        }
        for o in out.finished {
            self.shared.metrics.finished(&o);
            tracing::debug!(
                "request {} finished ({:?}): {} prompt tokens ({} cached), {} generated, {:.3} s",
                o.index,
                o.finish_reason,
                o.prompt_tokens,
                o.cached_prompt_tokens,
                o.output_tokens.len(),
                o.finished.duration_since(o.arrival).as_secs_f64()
            );
            if let Some(live) = self
                .by_index
                .remove(&o.index)
                .and_then(|id| self.live.remove(&id))
            {
                let _ = live.events.send((live.choice, Event::Done(o)));
            }
        }
        for id in gone {
            self.abort(engine, id);
        }
    }

    fn publish<B: Backend>(&self, engine: &Engine<'_, B>) {
        let (waiting, running) = engine.queue_lengths();
        let (used, total) = engine.cache_blocks();
        let prefix = engine.prefix_cache_stats();
        self.shared.metrics.set_load(Load {
            running,
            waiting,
            blocks_used: used,
            blocks_total: total,
            preemptions: engine.preemptions(),
            prefix_queried_tokens: prefix.queried_tokens,
            prefix_hit_tokens: prefix.hit_tokens,
        });
    }
}
