// SPDX-License-Identifier: MIT
#pragma once

// Locks across machines on etcd v3: the library filelock-etcd.
//
// The lock is etcd's own Mutex (the `concurrency` package of etcd's Go
// client, and `etcdctl lock NAME`): a client session holds one lease, kept
// alive on the event loop every TTL/3; locking NAME creates the key
// `NAME/<lease id in lowercase hex>` under that lease, and the lock is held
// while that key has the lowest create revision under `NAME/`. A filelock
// process, `etcdctl lock NAME` and Go's `concurrency.NewMutex(session, NAME)`
// exclude each other. Shared locks and locks with N holders (lock_options)
// keep that order by create revision under `NAME/`, with a key of their own
// per acquisition and their kind in its value.
//
// The held lock (`etcd::lock`) has a fencing token: its key's create
// revision, strictly increasing across successive holders of one name. Pass
// it with every write to the protected resource; the resource remembers the
// highest token it has seen and rejects a lower one. That is what makes a
// holder that lost its lock without knowing (a paused process, a network
// partition) harmless.
//
// The lost signal (`lock::on_lost`, and each adapter's async wait) fires when
// ownership can no longer be guaranteed: the lease's keep-alives failed
// until the client-side deadline (the send time of the last successful
// keep-alive + TTL - `config::lost_margin`, reached before the server can
// expire the lease and grant the lock to another), the lease was revoked or
// expired, or the key was deleted by someone else. The margin is the
// owner's time to stop: when the client itself gives a lease up on a lost
// signal, it does not revoke it while a lock held on it is not released
// (`lock::release()` or its destructor). The keep-alives stop; the lease
// expires by its TTL, or is revoked once every lock held on it is released,
// whichever comes first. Release a lost lock as soon as its section has
// stopped: that is what lets the next waiter in before the TTL.
//
// Transport: etcd's HTTP/JSON gateway through libcurl's multi interface,
// driven by the event loop itself (no thread, no blocking call on the loop).
// The adapters: <filelock/etcd_asio.hpp> (Asio, header-only; also the
// synchronous client), <filelock/etcd_uv.hpp> (libuv).

#include <filelock/error.hpp>
#include <filelock/export.hpp>
#include <filelock/inspect.hpp>
#include <filelock/options.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

namespace filelock::etcd {

/// Errors of the etcd backend (category "filelock.etcd"). Contention and
/// deadlines are filelock's own `errc::locked` and `errc::timeout`.
enum class errc {
    /// The lock's ownership can no longer be guaranteed (lease expired,
    /// revoked, keep-alives failed until the client-side deadline, or the
    /// key was deleted by someone else).
    lost = 1,
    /// No endpoint answered (connection refused, unresolvable host, dial
    /// timeout). Compares equal to `std::errc::host_unreachable`.
    unreachable,
    /// The request was sent but no answer came within the request timeout.
    /// Compares equal to `std::errc::timed_out`.
    request_timeout,
    /// TLS failed (the server's certificate does not verify against the CA,
    /// a bad client certificate or key).
    tls,
    /// etcd answered with an HTTP error status (4xx, 5xx); without etcd's
    /// error body, the message says the endpoint is not an etcd v3 gateway.
    http_status,
    /// etcd answered with an error (its gRPC status and message).
    server,
    /// Authentication failed (bad user or password, or a token refused).
    auth,
    /// etcd's answer was not the JSON expected (malformed, truncated).
    bad_reply,
    /// The configuration or the name is invalid (no endpoint, an endpoint
    /// that is not http:// or https://, an empty name, a TTL < 1 s).
    /// Compares equal to `std::errc::invalid_argument`.
    invalid_argument,
    /// The connection was reset or closed before the whole answer came (a
    /// member killed mid-request). Compares equal to
    /// `std::errc::connection_reset`.
    connection_reset,
};

FILELOCK_API const std::error_category& etcd_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), etcd_category()};
}

/// How a client reaches etcd and what its session is.
struct config {
    /// `http://host:port` or `https://host:port`; requests go to the first
    /// that answers, and fail over to the next.
    std::vector<std::string> endpoints{"http://127.0.0.1:2379"};
    /// TLS: the CA bundle that verifies the server, and the client's
    /// certificate and key (PEM files). Empty: libcurl's defaults, no client
    /// certificate.
    std::string ca_file;
    /// The client's certificate (PEM).
    std::string cert_file;
    /// The client's private key (PEM).
    std::string key_file;
    /// etcd's user authentication (`/v3/auth/authenticate`); empty: none.
    std::string user;
    /// The user's password.
    std::string password;
    /// Connecting to one endpoint.
    std::chrono::milliseconds dial_timeout{2000};
    /// Answering one request, once connected.
    std::chrono::milliseconds request_timeout{5000};
    /// The session's lease TTL (as `etcdctl lock --ttl`); at least 1 s.
    std::chrono::seconds ttl{10};
    /// How long before the server could expire the lease the holder is
    /// told it lost the lock (clamped to TTL/2).
    std::chrono::milliseconds lost_margin{1000};
    /// The value written under the lock's key: the lock files' template
    /// (`{pid}`, `{hostname}`), written as `" 1234@host\n"`, and named by
    /// contenders' errors. Empty: an empty value, as `etcdctl lock` writes.
    std::string content = "{pid}@{hostname}";
};

/// Checks a configuration (endpoints' schemes, TTL): what a client's
/// constructor throws for.
FILELOCK_API std::error_code validate(const config& cfg, std::string& why);

/// What kind of lock an acquisition takes (the lock files' `mode` and
/// `slots`, same spelling and meaning). The default is etcd's Mutex, as
/// `etcdctl lock`, bit for bit. Every key stays `NAME/...` under the
/// session's lease, ordered by create revision; the kinds other than the
/// default record their kind in the key's value (`filelock:shared` or
/// `filelock:slots=N` on a first line, then the content) and have a key of
/// their own per acquisition, `NAME/<lease hex>/<k>`, so that one client
/// may hold several. A key with any other value (etcdctl's empty one, Go's
/// Mutex) is exclusive.
struct lock_options {
    /// `shared`: a reader, as Go's `recipe.RWMutex`: it waits only for the
    /// earlier keys that are not readers, and every later writer (ours,
    /// `etcdctl lock`) waits for it, so a stream of readers never starves a
    /// waiting writer.
    filelock::lock_mode mode = filelock::lock_mode::exclusive;
    /// At most this many holders at once ("slots"): a holder is one of the
    /// `slots` lowest create revisions under the name, all of them slot
    /// holders (an exclusive key before it, etcdctl's too, excludes it). 1 to
    /// filelock::max_slots (1024); more than 1 with `shared` is invalid
    /// (etcd::errc::invalid_argument, before anything is sent).
    unsigned slots = 1;
};

namespace detail {
class session_handle;
struct held_state;
}  // namespace detail

/// A held etcd lock. Move-only. Destroying it (or `release()`) deletes the
/// key, best effort and never blocking: the request is sent on the client's
/// loop. Use it on the client's loop thread.
class FILELOCK_API lock {
public:
    /// Holds nothing.
    lock() noexcept;
    /// Takes over `o`'s lock; `o` holds nothing.
    lock(lock&& o) noexcept;
    /// Releases this lock (best effort), then takes over `o`'s.
    lock& operator=(lock&& o) noexcept;
    ~lock();

    /// Whether this object holds a lock (it may have been lost since: see
    /// `lost()`).
    bool held() const noexcept;
    /// held().
    explicit operator bool() const noexcept { return held(); }
    /// The lock's name.
    const std::string& name() const noexcept;
    /// Its key in etcd (`NAME/<lease hex>`; shared and slot locks:
    /// `NAME/<lease hex>/<k>`).
    const std::string& key() const noexcept;
    /// The key's create revision: strictly increasing across successive
    /// holders of one name (see the header comment).
    std::int64_t fencing_token() const noexcept;
    /// The session's lease ID.
    std::int64_t lease() const noexcept;
    /// With `lock_options::slots`: how many holders were ahead of it when it
    /// won (0 to slots - 1), its rank among the holders at that moment (etcd
    /// keeps no slot numbers: once an earlier holder left, a later holder may
    /// tell the same number). 0 for the other kinds.
    unsigned slot() const noexcept;
    /// The endpoint that granted it.
    const std::string& endpoint() const noexcept;
    /// Whether the lost signal fired.
    bool lost() const noexcept;
    /// Why (etcd::errc::lost), or empty while not lost.
    std::error_code lost_reason() const noexcept;
    /// Until when ownership is guaranteed: the lost signal's deadline (the
    /// send time of the last answered keep-alive + TTL - the margin, see the
    /// header comment), as a time since the epoch of CLOCK_BOOTTIME on Linux
    /// (of std::chrono::steady_clock elsewhere), which another process of
    /// this machine can compare with its own reading. It moves on with each
    /// answered keep-alive; zero when nothing is held or the lease is gone.
    /// Use it on the client's loop thread.
    std::chrono::nanoseconds guaranteed_until() const noexcept;

    /// Calls `f(reason)` once, on the loop, when the lock is lost (at once,
    /// through a post, if it already is); not called after release. A later
    /// call replaces the earlier callback.
    void on_lost(std::function<void(std::error_code)> f);
    /// Deletes the key (guarded by its create revision) and calls
    /// `f(ec)` on the loop when etcd answered (or the request failed). The
    /// lock is released locally at once: another waiter of this process may
    /// take it. Empty `f`: best effort.
    void release(std::function<void(std::error_code)> f = {});

    /// The internal state (adapters).
    explicit lock(std::shared_ptr<detail::held_state> s) noexcept;

private:
    std::shared_ptr<detail::held_state> s_;
};

/// An acquisition's outcome: the lock, or the error with a message that
/// names the endpoint and the cause, or on contention the holder (the value
/// under its key, trimmed).
struct lock_result {
    /// Empty when won; filelock::errc::timeout at the deadline; otherwise
    /// the failure.
    std::error_code ec;
    /// The lock, when won.
    etcd::lock held;
    /// The failure, naming the endpoint (or the lock and its holder).
    std::string message;
    /// The lock's name.
    std::string name;
    /// On contention: the holder's value, trimmed (e.g. "1234@host").
    std::string holder;
};

/// A key under a lock's name, as inspect sees it: a holder or a waiter.
struct lock_party {
    /// Its key (`NAME/<lease hex>`, or `NAME/<lease hex>/<k>` for our shared
    /// and slot locks).
    std::string key;
    /// What its value says: `filelock:shared` a reader, `filelock:slots=N`
    /// one of N slots; any other value (etcdctl's and Go's Mutex's empty
    /// one, our exclusive lock's content) an exclusive writer.
    filelock::lock_kind kind = filelock::lock_kind::exclusive;
    /// The N of a slot holder's `filelock:slots=N`; 0 for the other kinds.
    unsigned slots = 0;
    /// The key's create revision: the fencing token its holder has
    /// (etcd::lock::fencing_token()), and its place in the queue.
    std::int64_t fencing_token = 0;
    /// The lease the key is bound to (0: none).
    std::int64_t lease = 0;
    /// The lease's TTL left, as etcd tells it; empty when the key has no
    /// lease or the lease is gone (expired since the keys were read).
    std::optional<std::chrono::seconds> ttl;
    /// The process and its host, from a value of the form our locks write
    /// (`" 1234@host\n"`, the default content template); 0 and empty when
    /// the value says nothing of them (etcdctl's empty value, a template of
    /// another form). etcd keeps no time for a key: since when it holds is
    /// not known.
    long long pid = 0;
    /// The host named in the value.
    std::string host;
    /// The value without its kind's tag, trimmed (e.g. "1234@host").
    std::string content;
    /// Waiters: their place in the queue, 1 for the next in line; 0 for
    /// holders.
    std::uint64_t position = 0;
};

/// Who holds a lock of etcd and who waits for it (etcd::inspect): a snapshot
/// at one revision of the store.
struct lock_status {
    /// The lock's name.
    std::string name;
    /// The holders by create revision: the lowest key for an exclusive lock;
    /// the N lowest slot holders; the readers before the first writer.
    std::vector<lock_party> holders;
    /// The other keys, in queue order (create revision).
    std::vector<lock_party> waiters;
    /// The store's revision the keys were read at.
    std::int64_t revision = 0;
    /// The endpoint that answered.
    std::string endpoint;
    /// Whether someone holds the lock.
    bool held() const noexcept { return !holders.empty(); }
};

/// An inspection's outcome: the status, or the error with a message naming
/// the endpoint and the cause.
struct inspect_result {
    /// Empty on success.
    std::error_code ec;
    /// What was seen (empty on failure).
    lock_status status;
    /// The failure, naming the endpoint and the cause.
    std::string message;
};

/// A change under a lock's name (wait_change): the revision of the first
/// key created, changed or deleted under `NAME/` after the revision asked
/// for, or the error.
struct change_result {
    /// Empty when a change came.
    std::error_code ec;
    /// The store's revision with the change (read the lock again from it).
    std::int64_t revision = 0;
    /// The failure, naming the endpoint and the cause.
    std::string message;
};

}  // namespace filelock::etcd

/// @cond
template <>
struct std::is_error_code_enum<filelock::etcd::errc> : std::true_type {};
/// @endcond
