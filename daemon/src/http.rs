//! The local API: HTTP/1.1 + JSON on a Unix socket, for the `hearth` CLI and other thin
//! clients. The socket is 0600 in a 0700 directory, and every connection's peer uid is
//! checked against ours, so only this user's programs can talk to the daemon.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hearth_protocol::api::{self, ApiError};
use libp2p::Multiaddr;
use tokio::net::{UnixListener, UnixStream};

use crate::join;
use crate::keeper::{Keeper, KeeperError};
use crate::net::NetHandle;
use crate::node::{Node, NodeError};

#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    pub net: NetHandle,
    pub peering: crate::peering::Peering,
    /// Turns true when the daemon starts to stop: open event streams end then, or the
    /// graceful shutdown would wait on them for as long as their clients stay.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// An API failure: an HTTP status and an [`ApiError`] body.
pub struct Failure(StatusCode, ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<NodeError> for Failure {
    fn from(e: NodeError) -> Self {
        let (status, code) = match &e {
            NodeError::GroupNotFound(_) => (StatusCode::NOT_FOUND, "group_not_found"),
            NodeError::AmbiguousGroup(_) => (StatusCode::CONFLICT, "ambiguous_group"),
            NodeError::MemberNotFound(_) => (StatusCode::NOT_FOUND, "member_not_found"),
            NodeError::AgreementNotFound(_) => (StatusCode::NOT_FOUND, "agreement_not_found"),
            NodeError::InviteNotFound(_) => (StatusCode::NOT_FOUND, "invite_not_found"),
            NodeError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            NodeError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            NodeError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            NodeError::Unreachable(_) => (StatusCode::BAD_GATEWAY, "unreachable"),
            NodeError::Store(_) | NodeError::Internal(_) => {
                tracing::error!("request failed: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Failure(status, ApiError::new(code, e.to_string()))
    }
}

impl From<JsonRejection> for Failure {
    fn from(e: JsonRejection) -> Self {
        Failure(
            StatusCode::BAD_REQUEST,
            ApiError::new(
                "bad_request",
                format!(
                    "the request body is not what this endpoint takes: {}",
                    e.body_text()
                ),
            ),
        )
    }
}

type Answer<T> = Result<Json<T>, Failure>;

/// Request bodies: a malformed one becomes a [`Failure`] with our error shape.
struct Body<T>(T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    Json<T>: axum::extract::FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Failure;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Failure> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(Body(v))
    }
}

/// The API as served on the socket: status, unlock, lock, panic and passphrases here;
/// everything else goes to the unlocked daemon's [`router`], run on its own runtime, or is
/// refused while locked.
pub fn front_router(keeper: Arc<Keeper>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/unlock", axum::routing::post(unlock))
        .route("/v1/lock", axum::routing::post(lock))
        .route("/v1/panic", axum::routing::post(panic))
        .route(
            "/v1/passphrase",
            axum::routing::put(set_passphrase).delete(remove_passphrase),
        )
        .route("/v1/passphrase/duress", axum::routing::put(set_duress))
        .route("/v1/events", get(events))
        .fallback(forward)
        // One request per connection: an idle kept-alive connection would hold the last
        // request (a passphrase, a text) in its buffers after locking. The CLI opens one
        // connection per command anyway.
        .layer(axum::middleware::map_response(close_connection))
        .with_state(keeper)
}

async fn close_connection(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

fn locked() -> Failure {
    keeper_failure(KeeperError::Locked)
}

fn keeper_failure(e: KeeperError) -> Failure {
    let (status, code) = match &e {
        KeeperError::Locked => (StatusCode::LOCKED, api::ERROR_LOCKED),
        KeeperError::AlreadyUnlocked => (StatusCode::CONFLICT, "already_unlocked"),
        KeeperError::WrongPassphrase => (StatusCode::UNAUTHORIZED, api::ERROR_WRONG_PASSPHRASE),
        KeeperError::SlowDown { .. } => (StatusCode::TOO_MANY_REQUESTS, api::ERROR_SLOW_DOWN),
        KeeperError::NotProtected => (StatusCode::CONFLICT, "no_passphrase"),
        KeeperError::AlreadyProtected => (StatusCode::CONFLICT, "passphrase_set"),
        KeeperError::Refused(_) => (StatusCode::BAD_REQUEST, "invalid"),
        KeeperError::Interrupted => (StatusCode::SERVICE_UNAVAILABLE, "interrupted"),
        KeeperError::Internal(_) => {
            tracing::error!("request failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    };
    Failure(status, ApiError::new(code, e.to_string()))
}

impl From<KeeperError> for Failure {
    fn from(e: KeeperError) -> Self {
        keeper_failure(e)
    }
}

async fn status(State(keeper): State<Arc<Keeper>>) -> Json<api::Status> {
    Json(keeper.status().await)
}

async fn unlock(
    State(keeper): State<Arc<Keeper>>,
    Body(req): Body<api::Unlock>,
) -> Answer<api::Status> {
    if keeper.auto_lock_due() {
        let _ = keeper.lock().await;
    }
    keeper.unlock(req.passphrase).await?;
    keeper.touch();
    Ok(Json(keeper.status().await))
}

async fn lock(State(keeper): State<Arc<Keeper>>) -> Answer<api::Status> {
    keeper.lock().await?;
    Ok(Json(keeper.status().await))
}

async fn panic(State(keeper): State<Arc<Keeper>>) -> Answer<api::Panicked> {
    keeper.panic().await?;
    Ok(Json(api::Panicked { destroyed: true }))
}

async fn set_passphrase(
    State(keeper): State<Arc<Keeper>>,
    Body(req): Body<api::SetPassphrase>,
) -> Answer<api::Status> {
    note_use(&keeper).await?;
    keeper.set_passphrase(req.current, req.passphrase).await?;
    Ok(Json(keeper.status().await))
}

async fn remove_passphrase(
    State(keeper): State<Arc<Keeper>>,
    Body(req): Body<api::RemovePassphrase>,
) -> Answer<api::Status> {
    note_use(&keeper).await?;
    keeper.remove_passphrase(req.current).await?;
    Ok(Json(keeper.status().await))
}

async fn set_duress(
    State(keeper): State<Arc<Keeper>>,
    Body(req): Body<api::SetDuress>,
) -> Answer<api::Status> {
    note_use(&keeper).await?;
    keeper.set_duress(req.current, req.duress).await?;
    Ok(Json(keeper.status().await))
}

/// Notes a client request, which holds auto-lock off; one that comes after the auto-lock
/// limit (the computer asleep meanwhile) locks first and is refused.
async fn note_use(keeper: &Keeper) -> Result<(), Failure> {
    if keeper.auto_lock_due() {
        let _ = keeper.lock().await;
        return Err(locked());
    }
    keeper.touch();
    Ok(())
}

/// Every other request: run by the unlocked daemon's router on the unlocked runtime, so
/// whatever it spawns ends when the daemon locks.
async fn forward(State(keeper): State<Arc<Keeper>>, req: axum::extract::Request) -> Response {
    use tower::ServiceExt;
    if let Err(refused) = note_use(&keeper).await {
        return refused.into_response();
    }
    let Some(gate) = keeper.gate() else {
        return locked().into_response();
    };
    let router = gate.router;
    match gate.handle.spawn(router.oneshot(req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        // The daemon locked while the request ran: it may have done it.
        Err(_) => keeper_failure(KeeperError::Interrupted).into_response(),
    }
}

/// The unlocked daemon's API (see [`front_router`] for what reaches it).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/groups", get(list_groups).post(create_group))
        .route("/v1/groups/{group}", get(show_group))
        .route(
            "/v1/groups/{group}/agreements",
            get(list_agreements).post(add_agreement),
        )
        .route("/v1/groups/{group}/agreements/{id}", get(show_agreement))
        .route(
            "/v1/groups/{group}/invites",
            get(list_invites).post(create_invite),
        )
        .route(
            "/v1/groups/{group}/invites/{id}",
            axum::routing::delete(withdraw_invite),
        )
        .route("/v1/groups/{group}/codes", axum::routing::post(create_code))
        .route("/v1/groups/{group}/codes/{channel}", get(code_status))
        .route(
            "/v1/groups/{group}/codes/{channel}/approval",
            axum::routing::post(decide_code),
        )
        .route("/v1/groups/{group}/members", get(list_members))
        .route(
            "/v1/groups/{group}/members/{member}",
            axum::routing::delete(remove_member),
        )
        .route(
            "/v1/groups/{group}/members/{member}/safety-number",
            get(safety_number),
        )
        .route(
            "/v1/groups/{group}/members/{member}/verify",
            axum::routing::post(verify_member),
        )
        .route(
            "/v1/groups/{group}/members/{member}/role",
            axum::routing::put(set_role),
        )
        .route("/v1/groups/{group}/leave", axum::routing::post(leave_group))
        .route("/v1/join", axum::routing::post(join_group))
        .route("/v1/peers", get(list_peers).post(add_peer))
        .fallback(|| async {
            Failure(
                StatusCode::NOT_FOUND,
                ApiError::new("not_found", "no such endpoint; see docs/cli.md for the API"),
            )
        })
        .with_state(state)
}

async fn create_group(
    State(s): State<AppState>,
    Body(req): Body<api::CreateGroup>,
) -> Answer<api::GroupCreated> {
    let node = s.node.clone();
    let id = blocking(move || {
        node.create_group(
            &req.name,
            req.purpose.as_deref().unwrap_or(""),
            req.my_name.as_deref(),
        )
    })
    .await?;
    Ok(Json(api::GroupCreated {
        group_id: id.to_hex(),
    }))
}

async fn list_groups(State(s): State<AppState>) -> Answer<Vec<api::GroupSummary>> {
    Ok(Json(s.node.list_groups()))
}

async fn show_group(
    State(s): State<AppState>,
    UrlPath(group): UrlPath<String>,
) -> Answer<api::GroupDetail> {
    let id = s.node.resolve_group(&group)?;
    Ok(Json(s.node.group_detail(&id)?))
}

async fn list_agreements(
    State(s): State<AppState>,
    UrlPath(group): UrlPath<String>,
) -> Answer<Vec<api::Agreement>> {
    let id = s.node.resolve_group(&group)?;
    Ok(Json(s.node.agreements(&id)?))
}

async fn show_agreement(
    State(s): State<AppState>,
    UrlPath((group, agreement)): UrlPath<(String, String)>,
) -> Answer<api::Agreement> {
    let id = s.node.resolve_group(&group)?;
    Ok(Json(s.node.agreement(&id, &agreement)?))
}

/// Server-sent events: one per group change, so clients need not ask again and again.
/// `GET /v1/events`, served outside the unlocked runtime (the stream outlives the handler);
/// it ends when the daemon locks or stops.
async fn events(State(keeper): State<Arc<Keeper>>) -> Result<Response, Failure> {
    note_use(&keeper).await?;
    let s = keeper.gate().ok_or_else(locked)?.state;
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    let mut stopping = s.stopping.clone();
    let stream = futures::stream::unfold(s.node.group_events(), |mut rx| async move {
        let event = match rx.recv().await {
            Ok(id) => Event::default()
                .event(api::EVENT_GROUP_CHANGED)
                .json_data(api::GroupChanged {
                    group_id: id.to_hex(),
                })
                .ok()?,
            Err(RecvError::Lagged(_)) => Event::default().event(api::EVENT_RESYNC),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(event), rx))
    })
    .take_until(async move {
        // A dropped sender means the daemon is going away too.
        let _ = stopping.wait_for(|stop| *stop).await;
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn add_agreement(
    State(s): State<AppState>,
    UrlPath(group): UrlPath<String>,
    Body(req): Body<api::AddAgreement>,
) -> Answer<api::AgreementAdded> {
    let id = s.node.resolve_group(&group)?;
    let node = s.node.clone();
    let agreement = blocking(move || node.add_agreement(&id, &req.text)).await?;
    Ok(Json(api::AgreementAdded { id: agreement }))
}

async fn create_invite(
    State(s): State<AppState>,
    UrlPath(group): UrlPath<String>,
    Body(req): Body<api::CreateInvite>,
) -> Answer<api::InviteCreated> {
    let id = s.node.resolve_group(&group)?;
    let ttl = req.ttl_secs.unwrap_or(api::DEFAULT_INVITE_TTL_SECS);
    Ok(Json(join::create_invite(&s.node, &s.net, &id, ttl).await?))
}

async fn list_invites(
    State(s): State<AppState>,
    UrlPath(group): UrlPath<String>,
) -> Answer<api::InviteList> {
    let id = s.node.resolve_group(&group)?;
    let node = s.node.clone();
    Ok(Json(blocking(move || node.list_invites(&id)).await?))
}

async fn withdraw_invite(
    State(s): State<AppState>,
    UrlPath((group, invite)): UrlPath<(String, String)>,
) -> Answer<api::InviteWithdrawn> {
    let id = s.node.resolve_group(&group)?;
    let node = s.node.clone();
    Ok(Json(
        blocking(move || node.withdraw_invite(&id, &invite)).await?,
    ))
}

async fn create_code(
    State(s): State<AppState>,
    UrlPath(group): UrlPath<String>,
    Body(req): Body<api::CreateCode>,
) -> Answer<api::CodeCreated> {
    let id = s.node.resolve_group(&group)?;
    let ttl = req.ttl_secs.unwrap_or(api::DEFAULT_CODE_TTL_SECS);
    let node = s.node.clone();
    Ok(Json(blocking(move || node.open_code(&id, ttl)).await?))
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    /// Seconds to wait for the code to be used or to expire.
    #[serde(default)]
    wait: Option<u64>,
}

async fn code_status(
    State(s): State<AppState>,
    UrlPath((group, channel)): UrlPath<(String, u16)>,
    axum::extract::Query(q): axum::extract::Query<WaitQuery>,
) -> Answer<api::CodeStatus> {
    let id = s.node.resolve_group(&group)?;
    let wait = std::time::Duration::from_secs(q.wait.unwrap_or(0).min(api::MAX_CODE_WAIT_SECS));
    Ok(Json(
        crate::code::wait_for(&s.node, &id, channel, wait).await?,
    ))
}

async fn decide_code(
    State(s): State<AppState>,
    UrlPath((group, channel)): UrlPath<(String, u16)>,
    Body(req): Body<api::CodeApproval>,
) -> Answer<api::CodeStatus> {
    let id = s.node.resolve_group(&group)?;
    Ok(Json(s.node.decide_code(&id, channel, &req)?))
}

async fn list_members(
    State(s): State<AppState>,
    UrlPath(group): UrlPath<String>,
) -> Answer<Vec<api::MemberInfo>> {
    let id = s.node.resolve_group(&group)?;
    Ok(Json(s.node.members(&id)?))
}

async fn safety_number(
    State(s): State<AppState>,
    UrlPath((group, member)): UrlPath<(String, String)>,
) -> Answer<api::SafetyNumber> {
    let id = s.node.resolve_group(&group)?;
    let member = s.node.resolve_member(&id, &member)?;
    Ok(Json(s.node.safety_number(&id, &member, false)?))
}

async fn verify_member(
    State(s): State<AppState>,
    UrlPath((group, member)): UrlPath<(String, String)>,
) -> Answer<api::SafetyNumber> {
    let id = s.node.resolve_group(&group)?;
    let member = s.node.resolve_member(&id, &member)?;
    let node = s.node.clone();
    Ok(Json(
        blocking(move || node.safety_number(&id, &member, true)).await?,
    ))
}

async fn set_role(
    State(s): State<AppState>,
    UrlPath((group, member)): UrlPath<(String, String)>,
    Body(req): Body<api::SetRole>,
) -> Answer<api::MemberInfo> {
    let id = s.node.resolve_group(&group)?;
    let member = s.node.resolve_member(&id, &member)?;
    let node = s.node.clone();
    Ok(Json(
        blocking(move || node.set_role(&id, &member, req.role)).await?,
    ))
}

async fn remove_member(
    State(s): State<AppState>,
    UrlPath((group, member)): UrlPath<(String, String)>,
) -> Answer<api::MemberRemoved> {
    let id = s.node.resolve_group(&group)?;
    let member = s.node.resolve_member(&id, &member)?;
    let node = s.node.clone();
    let epoch = blocking(move || node.remove_member(&id, &member)).await?;
    Ok(Json(api::MemberRemoved {
        member_id: member.to_hex(),
        epoch,
    }))
}

async fn leave_group(
    State(s): State<AppState>,
    UrlPath(group): UrlPath<String>,
    Body(req): Body<api::Leave>,
) -> Answer<api::Left> {
    let id = s.node.resolve_group(&group)?;
    Ok(Json(
        crate::leave::leave(s.node.clone(), id, req.keep_copy).await?,
    ))
}

async fn join_group(State(s): State<AppState>, Body(req): Body<api::Join>) -> Answer<api::Joined> {
    let name = req.name.as_deref().unwrap_or("");
    let id = join::join(
        s.node.clone(),
        s.net.clone(),
        s.peering.clone(),
        &req.token,
        name,
    )
    .await?;
    Ok(Json(api::Joined {
        group_id: id.to_hex(),
    }))
}

async fn add_peer(
    State(s): State<AppState>,
    Body(req): Body<api::AddPeer>,
) -> Answer<api::PeerAdded> {
    let addr: Multiaddr = req.addr.trim().parse().map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            ApiError::new(
                "invalid",
                format!(
                    "{:?} is not a multiaddr ({e}); it looks like /ip4/192.0.2.7/tcp/4001",
                    req.addr
                ),
            ),
        )
    })?;
    s.net.dial(addr.clone()).await.map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            ApiError::new("invalid", format!("cannot dial {addr}: {e:#}")),
        )
    })?;
    crate::peers::remember(s.node.store(), &addr).map_err(NodeError::from)?;
    Ok(Json(api::PeerAdded {
        addr: addr.to_string(),
    }))
}

async fn list_peers(State(s): State<AppState>) -> Answer<Vec<api::Peer>> {
    Ok(Json(
        s.net
            .peers()
            .await
            .into_iter()
            .map(|(peer, addrs)| api::Peer {
                peer_id: peer.to_string(),
                addrs: addrs.iter().map(|a| a.to_string()).collect(),
            })
            .collect(),
    ))
}

/// Runs store-writing work (fsync) off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::from(NodeError::Internal(format!("worker failed: {e}"))))?
        .map_err(Failure::from)
}

/// Accepts only connections from processes running as our own uid.
pub struct SameUserListener {
    inner: UnixListener,
    uid: u32,
}

impl axum::serve::Listener for SameUserListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(cred) if cred.uid() == self.uid => return (stream, addr),
                    Ok(cred) => {
                        tracing::warn!(
                            uid = cred.uid(),
                            "refused an API connection from another user"
                        )
                    }
                    Err(e) => tracing::warn!("refused an API connection: no peer credentials: {e}"),
                },
                Err(e) => {
                    tracing::warn!("accepting an API connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Binds the API socket: creates its directory (0700) if needed, refuses if another daemon
/// answers on it, replaces a stale socket, and makes the socket 0600.
pub async fn bind(path: &Path) -> anyhow::Result<SameUserListener> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    if !dir.exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another hearthd is already serving {}; stop it first, or pass a different --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // Create the socket with no group/other bits from the start, then pin it to 0600.
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let inner = bound.with_context(|| format!("binding the API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    Ok(SameUserListener { inner, uid })
}
