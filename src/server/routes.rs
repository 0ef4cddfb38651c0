//! The HTTP endpoints: OpenAI's completions, chat completions and models; health, metrics,
//! tokenize and detokenize. A request's choices go to the engine's thread; its answer is
//! collected, or streamed as server-sent events, and if its client goes away its choices are
//! aborted (the guard that owns them is dropped with the response).

use super::api::{
    self, ChatRequest, CompletionRequest, DetokenizeRequest, Job, ModelInfo, TokenizeRequest,
};
use super::engine_loop::{Command, Event, Shared, Submission};
use super::errors::{parse_json, ApiError};
use super::responses::{self, Endpoint, Header};
use super::text::ChoiceText;
use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mla_rt::chat::ChatTemplate;
use mla_rt::engine::request::RequestOutput;
use mla_rt::tokenizer::TextTokenizer;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub struct AppState {
    pub shared: Arc<Shared>,
    pub commands: Mutex<Sender<Command>>,
    pub tokenizer: Arc<TextTokenizer>,
    pub template: Result<ChatTemplate, String>,
    pub model_name: String,
    pub vocab_size: usize,
    pub max_pos: usize,
    pub api_key: Option<String>,
    pub max_waiting: usize,
    pub max_body_bytes: usize,
    pub next_id: AtomicU64,
}

type Shared_ = Arc<AppState>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(unknown_path)
        .with_state(state)
}

impl AppState {
    fn model(&self) -> ModelInfo<'_> {
        ModelInfo {
            name: &self.model_name,
            tokenizer: &self.tokenizer,
            template: self.template.as_ref().map_err(String::as_str),
            vocab_size: self.vocab_size,
            max_pos: self.max_pos,
        }
    }

    fn send(&self, command: Command) -> Result<(), ApiError> {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(command)
            .map_err(|_| ApiError::unavailable("the engine has stopped"))
    }

    /// The API key check, then the body read within the size limit.
    async fn body(&self, headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
        if let Some(key) = &self.api_key {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(key.as_str()) {
                return Err(ApiError::unauthorized());
            }
        }
        to_bytes(body, self.max_body_bytes)
            .await
            .map_err(|_| ApiError::too_large(self.max_body_bytes))
    }

    fn ready(&self) -> Result<(), ApiError> {
        if self.shared.is_stopped() {
            let why = self
                .shared
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            return Err(ApiError::unavailable(
                why.unwrap_or_else(|| "the server is shutting down".into()),
            ));
        }
        if !self.shared.is_ready() {
            return Err(ApiError::unavailable("the model is still loading"));
        }
        Ok(())
    }
}

async fn completions(
    State(s): State<Shared_>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = s.body(&headers, body).await?;
    let request: CompletionRequest = parse_json(&bytes)?;
    s.ready()?;
    let job = request.job(&s.model())?;
    run(s, Endpoint::Completions, job).await
}

async fn chat(
    State(s): State<Shared_>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = s.body(&headers, body).await?;
    let request: ChatRequest = parse_json(&bytes)?;
    s.ready()?;
    let job = request.job(&s.model())?;
    run(s, Endpoint::Chat, job).await
}

async fn models(State(s): State<Shared_>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    s.body(&headers, Body::empty()).await?;
    let created = Header::new(Endpoint::Completions, &s.model_name).created;
    Ok(Json(json!({"object": "list", "data": [{
        "id": s.model_name, "object": "model", "created": created, "owned_by": "mla-rt",
        "root": s.model_name, "max_model_len": s.max_pos,
    }]})))
}

async fn unknown_path(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("there is no endpoint `{}`", uri.path()))
}

async fn health(State(s): State<Shared_>) -> Response {
    match s.ready() {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(s): State<Shared_>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.shared.metrics.render(),
    )
        .into_response()
}

async fn tokenize(
    State(s): State<Shared_>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = s.body(&headers, body).await?;
    let request: TokenizeRequest = parse_json(&bytes)?;
    let model = s.model();
    api::check_model(request.model.as_deref(), &s.model_name)?;
    let ids = match (request.prompt, request.messages) {
        (Some(p), None) => s
            .tokenizer
            .encode(&p)
            .map_err(|e| ApiError::invalid(e.to_string(), Some("prompt")))?,
        (None, Some(m)) => api::chat_ids(&model, m)?,
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of `prompt` and `messages`",
                None,
            ))
        }
    };
    Ok(Json(
        json!({"count": ids.len(), "max_model_len": s.max_pos, "tokens": ids}),
    ))
}

async fn detokenize(
    State(s): State<Shared_>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = s.body(&headers, body).await?;
    let request: DetokenizeRequest = parse_json(&bytes)?;
    api::check_model(request.model.as_deref(), &s.model_name)?;
    let ids = api::token_ids(&request.tokens, s.vocab_size, "tokens")?;
    let text = s
        .tokenizer
        .decode(&ids)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({ "prompt": text })))
}

/// The choices of one request in the engine. Dropped (its response finished, or its client
/// gone), it aborts every choice not yet finished.
struct Choices {
    state: Arc<AppState>,
    job: Job,
    /// The server's id of each choice; whether each is finished, and whether submitted.
    ids: Vec<u64>,
    finished: Vec<bool>,
    submitted: Vec<bool>,
    events: UnboundedReceiver<(usize, Event)>,
    sender: super::engine_loop::EventSender,
}

impl Drop for Choices {
    fn drop(&mut self) {
        for (c, &id) in self.ids.iter().enumerate() {
            if self.submitted[c] && !self.finished[c] {
                let _ = self.state.send(Command::Abort(id));
            }
        }
    }
}

impl Choices {
    /// Submits choice `c`.
    fn submit(&mut self, c: usize) -> Result<(), ApiError> {
        let request = self.job.choices[c].request.clone();
        self.state.shared.queued.fetch_add(1, Ordering::AcqRel);
        self.submitted[c] = true;
        self.state.send(Command::Submit(Submission {
            id: self.ids[c],
            choice: c,
            request,
            events: self.sender.clone(),
        }))
    }

    /// The first choice of each prompt now; its other choices once it has produced something,
    /// so that they find its prompt in the prefix cache.
    fn submit_leaders(&mut self) -> Result<(), ApiError> {
        for p in 0..self.job.prompts.len() {
            self.submit(p * self.job.n)?;
        }
        Ok(())
    }

    fn followers_of(&mut self, c: usize) -> Result<(), ApiError> {
        let n = self.job.n;
        if c % n == 0 {
            for f in c + 1..c + n {
                if !self.submitted[f] {
                    self.submit(f)?;
                }
            }
        }
        Ok(())
    }

    /// The next event; a closed channel (the engine gone) is a failure.
    async fn next(&mut self) -> Result<(usize, Event), ApiError> {
        let (c, event) = self
            .events
            .recv()
            .await
            .ok_or_else(|| ApiError::unavailable("the engine has stopped"))?;
        match &event {
            Event::Token(_) => self.followers_of(c)?,
            Event::Done(_) => {
                self.finished[c] = true;
                self.followers_of(c)?;
            }
            Event::Refused(why) => {
                self.finished[c] = true;
                return Err(ApiError::invalid(why.clone(), None));
            }
            Event::Failed(why) => {
                self.finished[c] = true;
                return Err(ApiError::unavailable(why.clone()));
            }
        }
        Ok((c, event))
    }

    fn all_finished(&self) -> bool {
        self.finished.iter().all(|&f| f)
    }
}

async fn run(state: Arc<AppState>, endpoint: Endpoint, job: Job) -> Result<Response, ApiError> {
    let waiting = state.shared.waiting();
    if waiting >= state.max_waiting {
        return Err(ApiError::busy(waiting));
    }
    let count = job.choices.len();
    let first_id = state.next_id.fetch_add(count as u64, Ordering::Relaxed);
    let (sender, events) = unbounded_channel();
    let mut choices = Choices {
        state: state.clone(),
        job,
        ids: (0..count as u64).map(|i| first_id + i).collect(),
        finished: vec![false; count],
        submitted: vec![false; count],
        events,
        sender,
    };
    choices.submit_leaders()?;
    let header = Header::new(endpoint, &state.model_name);
    match choices.job.stream {
        false => collect(choices, header)
            .await
            .map(|v| Json(v).into_response()),
        true => stream(choices, header).await,
    }
}

/// The whole response once every choice has finished.
async fn collect(mut choices: Choices, header: Header) -> Result<Value, ApiError> {
    let mut outputs: Vec<Option<RequestOutput>> = (0..choices.ids.len()).map(|_| None).collect();
    while !choices.all_finished() {
        if let (c, Event::Done(o)) = choices.next().await? {
            outputs[c] = Some(o);
        }
    }
    let s = &choices.state;
    let mut list = Vec::new();
    let mut completion_tokens = 0;
    for (c, o) in outputs.into_iter().enumerate() {
        let o = o.ok_or_else(|| ApiError::internal("a choice finished without output"))?;
        completion_tokens += o.output_tokens.len();
        let prompt = &choices.job.prompts[choices.job.choices[c].prompt];
        let echo = if choices.job.echo {
            prompt.text.as_str()
        } else {
            ""
        };
        let logprobs = choices
            .job
            .logprobs
            .map(|_| responses::logprobs(header.endpoint, &s.tokenizer, &o.logprobs, echo.len()));
        let text = format!("{echo}{}", o.text);
        list.push(header.choice(c, &text, logprobs, Some(o.finish_reason), None));
    }
    let usage = responses::usage(choices.job.prompt_tokens(), completion_tokens);
    Ok(header.response(list, usage))
}

/// Server-sent events: a chunk per token that adds text (or log-probabilities), the last chunk
/// of each choice with its finish reason, `usage` where asked for, then `[DONE]`. The first
/// event of each prompt is awaited before the response starts, so that a request the engine
/// refuses is an HTTP error, not a broken stream.
async fn stream(mut choices: Choices, header: Header) -> Result<Response, ApiError> {
    let mut early = std::collections::VecDeque::new();
    let n = choices.job.n;
    let mut heard = vec![false; choices.job.prompts.len()];
    while heard.iter().any(|h| !h) {
        let (c, event) = choices.next().await?;
        heard[c / n] |= c % n == 0;
        early.push_back((c, event));
    }
    let count = choices.ids.len();
    let state = StreamState {
        choices,
        header,
        texts: (0..count).map(|_| ChoiceText::default()).collect(),
        started: vec![false; count],
        completion_tokens: 0,
        early,
        ended: false,
    };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        let event = st.next_sse().await?;
        Some((Ok::<_, Infallible>(event), st))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

struct StreamState {
    choices: Choices,
    header: Header,
    texts: Vec<ChoiceText>,
    /// Whether each choice has sent its first chunk (the chat's role, an echoed prompt).
    started: Vec<bool>,
    completion_tokens: usize,
    early: std::collections::VecDeque<(usize, Event)>,
    ended: bool,
}

impl StreamState {
    /// The next SSE event, or None after `[DONE]`.
    async fn next_sse(&mut self) -> Option<SseEvent> {
        loop {
            if self.ended {
                return None;
            }
            if self.choices.all_finished() && self.early.is_empty() {
                if self.choices.job.include_usage {
                    self.choices.job.include_usage = false;
                    let usage =
                        responses::usage(self.choices.job.prompt_tokens(), self.completion_tokens);
                    let chunk = self.header.chunk(Vec::new(), Some(usage));
                    return Some(SseEvent::default().data(chunk.to_string()));
                }
                self.ended = true;
                return Some(SseEvent::default().data("[DONE]"));
            }
            let next = match self.early.pop_front() {
                Some(e) => Ok(e),
                None => self.choices.next().await,
            };
            let (c, event) = match next {
                Ok(e) => e,
                Err(e) => {
                    // Mid-stream, a failure can only be told in the stream itself.
                    self.ended = true;
                    return Some(SseEvent::default().data(e.body().to_string()));
                }
            };
            if let Some(chunk) = self.chunk(c, event) {
                return Some(SseEvent::default().data(chunk.to_string()));
            }
        }
    }

    /// The chunk one event makes, if any.
    fn chunk(&mut self, c: usize, event: Event) -> Option<Value> {
        let s = self.choices.state.clone();
        let job = &self.choices.job;
        let stops = &job.choices[c].request.stop;
        let first = !self.started[c];
        let mut text = String::new();
        if first && job.echo {
            text.push_str(&job.prompts[job.choices[c].prompt].text);
        }
        let (logprobs, finish) = match event {
            Event::Token(t) => {
                text.push_str(&self.texts[c].push(&s.tokenizer, t.token, stops));
                let lp = t
                    .logprobs
                    .map(|lp| responses::logprobs(self.header.endpoint, &s.tokenizer, &[lp], 0));
                (lp, None)
            }
            Event::Done(o) => {
                self.completion_tokens += o.output_tokens.len();
                text.push_str(&self.texts[c].finish(&o.text));
                (None, Some(o.finish_reason))
            }
            Event::Refused(_) | Event::Failed(_) => return None,
        };
        if text.is_empty() && logprobs.is_none() && finish.is_none() && !first {
            return None;
        }
        self.started[c] = true;
        let choice = self.header.choice(c, &text, logprobs, finish, Some(first));
        Some(self.header.chunk(vec![choice], None))
    }
}
