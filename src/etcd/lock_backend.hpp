// SPDX-License-Identifier: MIT
#pragma once

// The etcd backend of the acquire state machine (sans-I/O): an attempt is a
// chain of requests that the driver sends; their answers come back through
// on_reply. etcd's Mutex protocol:
//   1. txn: create NAME/<lease hex> under the lease if it does not exist;
//      read the first key of the prefix by create revision. Ours: won.
//   2. txn: while our key exists with our revision, read the last key created
//      before ours (the predecessor) and the first (the holder). None before
//      ours: won. Otherwise the waiter watches the prefix from the answer's
//      revision + 1 (so no deletion in between is missed): the
//      predecessor's deletion is a release event. When the predecessor was
//      the holder, and the stream showed no deletion of our key before it,
//      the lock is ours at that revision (no key created later can come
//      before ours): won without another request. Otherwise step 2 runs
//      again. Our key gone (our lease expired while waiting, etcd issue
//      #9921): errc::lost, never a win.
// A win is reported only on a live lease: the session's lease, before its
// deadline (the send time of the last answered keep-alive + TTL - margin).
// A deletion or an answer read after the deadline (a paused process, a
// stalled member) is errc::lost with lease_gone(): the driver lines up again
// on a new lease, as when our key vanished.
// Waiters of one session for one name queue locally first (one key per
// lease is all etcd's protocol allows), and a name held or being acquired by
// the session is local contention: no request is sent for it.
//
// Other kinds (a shared lock, a lock with N slots) keep the order by create
// revision and the key bound to the lease; the key's value says the kind
// (kind_of: an untagged value, etcdctl's empty one included, is exclusive),
// and each acquisition has a key of its own, NAME/<lease hex>/<k>, so that
// one session may hold several slots or shared locks of one name:
//   1. txn: create the key; read the keys of the prefix by create revision.
//   2. The earlier keys decide (admits): a reader waits for the earlier keys
//      that are not readers (Go's RWMutex: a writer waits for every earlier
//      key, so a stream of readers never starves it); a holder of N slots is
//      one of the N lowest create revisions, all of them slot holders
//      (an exclusive key, etcdctl's too, excludes them all, either order).
//   3. Contended: the waiter watches, from the answer's revision + 1, only
//      what can admit it (watch_target), as Go's waitDeletes does:
//      - an earlier key of a kind that excludes it (a reader: the last
//        earlier writer; slots: the last earlier key that is not a slot
//        holder): its deletion; then step 2 reads the earlier keys again;
//      - slots, more than N earlier keys: the key just before its own, when
//        that is a waiter for as many slots. That waiter is admitted exactly
//        when this one becomes next in line, and writes its key (touch,
//        value and lease kept) once admitted after waiting; that write or
//        the key's deletion makes this one read again;
//      - the next in line (N earlier slot holders, any of whose deletions
//        admits it), or slots of another N before it: the deletions of the
//        prefix; it keeps the set of earlier keys itself, and the deletion
//        that admits it is a win at that revision (its touch sent beside it).
//      Otherwise (a fallback timer) step 2 reads the earlier keys again.

#include <filelock/detail/acquire.hpp>
#include <filelock/etcd.hpp>

#include "lease.hpp"
#include "proto.hpp"

#include <array>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace filelock::etcd::detail {

using filelock::lock_mode;
using filelock::detail::clock;
using filelock::detail::lock_identity;

/// The kind of lock asked for: exclusive, shared, or one of N slots.
struct lock_kind {
    lock_mode mode = lock_mode::exclusive;
    unsigned slots = 1;
    /// Today's lock, bit for bit: etcd's Mutex.
    bool one_holder() const noexcept { return mode == lock_mode::exclusive && slots == 1; }
};

/// The most holders a lock admits: the lock files' maximum
/// (filelock::max_slots).
inline constexpr unsigned max_slots = 1024;

/// What kind of holder a key is, read from its value.
struct key_kind {
    bool shared = false;
    unsigned slots = 0;  // 0: not a slot holder
    bool exclusive() const noexcept { return !shared && slots == 0; }
};

/// The tag that starts a key's value for the kinds other than exclusive.
inline constexpr std::string_view shared_tag = "filelock:shared\n";
inline constexpr std::string_view slots_tag = "filelock:slots=";

/// The value of a key of kind `k` with the holder's content.
inline std::string value_for(const lock_kind& k, const std::string& content) {
    if (k.one_holder()) return content;
    if (k.mode == lock_mode::shared) return std::string(shared_tag) + content;
    return std::string(slots_tag) + std::to_string(k.slots) + "\n" + content;
}

/// The kind a value stands for: exclusive unless tagged (etcdctl's and Go's
/// Mutex write an empty value; anything not ours counts as exclusive).
inline key_kind kind_of(std::string_view value) noexcept {
    key_kind k;
    if (value.substr(0, shared_tag.size()) == shared_tag) {
        k.shared = true;
    } else if (value.substr(0, slots_tag.size()) == slots_tag) {
        unsigned n = 0;
        std::size_t i = slots_tag.size();
        for (; i < value.size() && value[i] >= '0' && value[i] <= '9' && n < 100000; ++i)
            n = n * 10 + static_cast<unsigned>(value[i] - '0');
        if (i < value.size() && value[i] == '\n' && n >= 1) k.slots = n;
    }
    return k;
}

/// A value without its kind's tag: what names the holder.
inline std::string_view content_of(std::string_view value) noexcept {
    if (kind_of(value).exclusive()) return value;
    const auto nl = value.find('\n');
    return nl == std::string_view::npos ? std::string_view{} : value.substr(nl + 1);
}

/// Whether a waiter of kind `k` is admitted beside the earlier keys `earlier`.
inline bool admits(const lock_kind& k, const std::vector<key_kind>& earlier) noexcept {
    if (k.mode == lock_mode::shared) {
        for (const auto& e : earlier)
            if (!e.shared) return false;
        return true;
    }
    if (earlier.size() >= k.slots) return false;
    for (const auto& e : earlier)
        if (e.slots == 0) return false;
    return true;
}

/// The keys a session holds or is acquiring: one key per lease and name.
class claims {
public:
    bool claim(const std::string& key) { return names_.insert(key).second; }
    void unclaim(const std::string& key) { names_.erase(key); }
    std::size_t size() const noexcept { return names_.size(); }

private:
    std::set<std::string> names_;
};

/// Transient failures: another member may answer soon (a leader election, a
/// member down or paused, a connection cut mid-answer). A waiter retries them
/// while its deadline allows; a complete but malformed answer, a refusal or a
/// client error is reported. etcd's errors are classed by their gRPC status
/// code, not their message.
inline bool transient(const http_reply& r, std::error_code ec) {
    if (r.ec) return r.ec != errc::tls;  // the transport: no (complete) answer came
    if (ec == errc::http_status) return r.status >= 500;
    if (ec == errc::server) {
        switch (grpc_code(json::parse(r.body, nullptr, false))) {
            case grpc::unavailable:
            case grpc::deadline_exceeded:
            case grpc::resource_exhausted:
            case grpc::aborted: return true;
            default: return r.status == 503;
        }
    }
    return false;
}

/// Whether a release (the guarded delete of a held key) that failed with
/// `ec` is sent again: transient failures, while the lease it was held on is
/// the session's, a bounded number of times (so that the key does not
/// outlive its release through a leader election).
inline bool retry_release(const http_reply& r, std::error_code ec, int tries, bool same_lease) {
    return ec && transient(r, ec) && tries < 50 && same_lease;
}

/// The local queues' key of an etcd lock: its name in one session (one key
/// per lease and name), tagged apart from lock files.
inline lock_identity identity_of(const std::string& name, const void* session) noexcept {
    lock_identity id;
    id.dev = std::hash<std::string>{}(name);
    id.ino = reinterpret_cast<std::uintptr_t>(session);
    id.backend = 2;  // etcd
    return id;
}

class lock_backend {
public:
    static constexpr bool queue_first = true;
    static constexpr std::array<clock::duration, 0> quick_retries{};

    /// `lease` (the session's) outlives the backend; its id is the lease used.
    lock_backend(claims& c, const void* session, std::string name, const std::string& content,
                 const lease_state& lease, lock_kind kind = {})
        : claims_(&c),
          session_(session),
          lease_state_(&lease),
          name_(std::move(name)),
          prefix_(name_ + "/"),
          key_(prefix_ + hex(lease.id)),
          value_(value_for(kind, content)),
          lease_(lease.id),
          kind_(kind) {}
    lock_backend(lock_backend&& o) noexcept = default;
    ~lock_backend() { unclaim(); }

    std::error_code try_acquire() {
        if (!claimed_) {
            if (kind_.one_holder()) {
                if (!claims_->claim(key_)) {
                    holder_ = "this process";
                    return filelock::errc::locked;  // held or being acquired here
                }
            } else {
                // A key of its own: the first NAME/<lease hex>/<k> free here.
                const auto base = prefix_ + hex(lease_) + "/";
                for (unsigned k = 0;; ++k)
                    if (claims_->claim(key_ = base + std::to_string(k))) break;
            }
            claimed_ = true;
        }
        if (kind_.one_holder() && pred_deleted_ && pred_was_owner_ && !own_deleted_ &&
            my_rev_ != 0) {
            // The holder's deletion came through the watch, ours did not.
            return won(pred_deleted_at_);
        }
        if (!kind_.one_holder() && my_rev_ != 0 && admitted_at_ && !own_deleted_)
            return won(admitted_at_);  // a deletion the watch saw admitted it
        path_ = "/v3/kv/txn";
        if (my_rev_ == 0) {
            step_ = step::create;
            body_ = create_body();
            ++creates_;
        } else {
            step_ = step::predecessor;
            body_ = kind_.one_holder() ? request::predecessor(key_, my_rev_, prefix_)
                                       : request::earlier(key_, my_rev_, prefix_);
        }
        return std::make_error_code(std::errc::operation_in_progress);
    }

    std::error_code on_reply(std::error_code transport) {
        if (transport) return failed(transport, reply_.detail, true);
        json j;
        std::string why;
        if (auto ec = parse(reply_, j, why)) {
            // The session's lease is gone (revoked, expired): the driver
            // starts again on a new one.
            if (ec == errc::server &&
                grpc_code(json::parse(reply_.body, nullptr, false)) == grpc::not_found) {
                why_ = why;
                lease_gone_ = true;
                return errc::lost;
            }
            return failed(ec, why, transient(reply_, ec));
        }
        answered_ = true;
        unanswered_ = {};
        try {
            switch (step_) {
                case step::create: return created(j);
                case step::clear_stale:
                    // The stale key is gone (or was already): create ours.
                    step_ = step::create;
                    body_ = create_body();
                    ++creates_;
                    return std::make_error_code(std::errc::operation_in_progress);
                case step::predecessor: return predecessor(j);
            }
            return errc::bad_reply;
        } catch (const std::exception& e) {
            return failed(errc::bad_reply, std::string("unexpected answer: ") + e.what());
        }
    }

    void drop_file() noexcept { watched_key_.clear(); }
    void release_won() noexcept {}  // the driver deletes the key of every failure
    bool won_inherited() const noexcept { return false; }
    bool wake_on_release() const noexcept { return true; }
    bool queues() const noexcept { return true; }
    bool identity(lock_identity& id) const noexcept {
        id = identity_of(name_, session_);
        return true;
    }
    bool retarget_watch() const noexcept {
        return !watch_key_.empty() && watch_key_ != watched_key_;
    }
    /// A deletion seen by the watch of the prefix, at `revision`: whether it
    /// is a release event for this waiter (its predecessor's, or its own key's,
    /// which the next attempt reports).
    bool on_delete(const std::string& key, std::int64_t revision) {
        if (key == key_ && my_rev_ != 0) {
            own_deleted_ = true;
            return true;
        }
        if (!kind_.one_holder()) {
            // Admitted without a request, or (a watch of one key) read again.
            const bool admitted = earlier_deleted(key, revision);
            return on_put(key, revision) || admitted;
        }
        if (key == pred_key_ && !pred_deleted_ && revision > pred_rev_) {
            pred_deleted_ = true;
            pred_deleted_at_ = revision;
            return true;
        }
        return false;
    }

    /// A write (or, from a watch of one key, a deletion) seen at `revision`:
    /// whether it is a release event (the watched key's: read again).
    bool on_put(const std::string& key, std::int64_t revision) {
        return !kind_.one_holder() && my_rev_ != 0 && watch_end_.empty() && key == watch_key_ &&
               revision > snapshot_rev_;
    }

    /// What a failed attempt (done with `ec`) leads to: lining up again
    /// (the waiter's key or lease died under it while its deadline allows:
    /// nothing was granted; on a new lease if `lease_gone()`), or reporting
    /// the outcome: at the deadline, contention is errc::timeout, unless no
    /// endpoint ever answered, which is then the failure itself.
    struct verdict {
        bool line_up_again = false;
        std::error_code outcome;
    };
    static constexpr int max_restarts = 10;
    verdict after_failure(std::error_code ec, bool in_time, int restarts) const noexcept {
        if (ec == errc::lost && in_time && restarts < max_restarts) return {true, ec};
        if (ec == errc::lost && !in_time) ec = filelock::errc::timeout;
        if (ec == filelock::errc::timeout && unanswered_) ec = unanswered_;
        return {false, ec};
    }
    /// The request that deletes what a failed attempt may have left: our
    /// key, guarded by its revision, or (our create's answer lost) the key
    /// whatever its revision while it is bound to our lease: a key under
    /// that name on another lease (or none) is not ours, never deleted.
    /// False: the attempt never claimed the name.
    bool cleanup(std::string& path, std::string& body) const {
        if (!claimed_) return false;
        path = "/v3/kv/txn";
        body = has_key() ? request::release(key_, my_rev_) : request::release_leased(key_, lease_);
        return true;
    }

    // The driver's side.
    const std::string& path() const noexcept { return path_; }
    const std::string& body() const noexcept { return body_; }
    void set_reply(http_reply r) { reply_ = std::move(r); }
    const std::string& watch_key() const noexcept { return watch_key_; }
    const std::string& watch_range_end() const noexcept { return watch_end_; }
    std::int64_t watch_revision() const noexcept { return watch_rev_; }
    /// Whether the won lock's key is to be written (touch_body(), sent by the
    /// driver beside the win, its answer ignored): a slot waiter that was
    /// ever turned away, so that the waiter behind it, which watches that key
    /// alone, learns that it is next in line (a reader has nobody watching
    /// it for that). Lost, it leaves that waiter to its fallback reads.
    bool touch_after_win() const noexcept { return contended_ && kind_.mode != lock_mode::shared; }
    std::string touch_body() const { return request::touch(key_, my_rev_); }
    /// Whether the watch reports writes (a watch of one key) or only
    /// deletions (of the prefix).
    bool watch_puts() const noexcept { return watch_end_.empty(); }
    void watch_armed() { watched_key_ = watch_key_; }
    /// Whether etcd has a key of ours to delete (after a failure).
    bool has_key() const noexcept { return my_rev_ != 0; }
    bool claimed() const noexcept { return claimed_; }
    /// etcd does not know the lease this attempt used (or may not: its
    /// deadline passed).
    bool lease_gone() const noexcept { return lease_gone_; }
    /// The session gave the lease up: the attempt is over (errc::lost).
    void lease_lost(std::string why) {
        lease_gone_ = true;
        why_ = std::move(why);
    }
    /// Gives the claim to the held lock (it unclaims on release).
    void hand_over_claim() noexcept { claimed_ = false; }
    void unclaim() noexcept {
        if (claimed_) claims_->unclaim(name_);
        claimed_ = false;
    }

    const std::string& name() const noexcept { return name_; }
    const std::string& key() const noexcept { return key_; }
    std::int64_t revision() const noexcept { return my_rev_; }
    /// The store's revision when the lock was won: the held lock watches its
    /// key from the next one.
    std::int64_t won_at() const noexcept { return won_at_; }
    std::int64_t lease() const noexcept { return lease_; }
    /// The slot won: how many holders were ahead of it (0 for the one-holder
    /// and shared kinds).
    unsigned slot() const noexcept { return kind_.mode == lock_mode::shared ? 0 : slot_; }
    const lock_kind& kind() const noexcept { return kind_; }
    const std::string& holder() const noexcept { return holder_; }
    const std::string& endpoint() const noexcept { return reply_.endpoint; }
    /// What the last failure was (for messages).
    const std::string& why() const noexcept { return why_; }
    /// The transient failure that every request of this attempt met (no
    /// endpoint answered), or empty: at the deadline it is the outcome,
    /// not contention.
    std::error_code unanswered() const noexcept { return unanswered_; }

private:
    enum class step { create, clear_stale, predecessor };

    std::error_code failed(std::error_code ec, std::string why, bool retry = false) {
        why_ = std::move(why);
        // The session reached etcd (it has a lease): an acquisition rides out
        // a member's failure until its deadline (the transport fails over to
        // the next endpoint); a configuration that never reached etcd fails
        // at the lease grant, at once.
        if (retry) {
            if (!answered_) unanswered_ = ec;
            return filelock::errc::locked;
        }
        return ec;
    }

    // What names a holder: its content (without its kind's tag), or its key.
    static std::string name_of(const kv& k) {
        const auto content = content_of(k.value);
        return content.empty() ? k.key : std::string(content);
    }

    std::string create_body() const {
        return kind_.one_holder() ? request::acquire(key_, value_, lease_, prefix_)
                                  : request::acquire_all(key_, value_, lease_, prefix_);
    }

    std::error_code created(const json& j) {
        const auto& rs = j.at("responses");
        const bool ok = j.value("succeeded", false);
        const std::int64_t header_rev = int64_of(j.at("header"), "revision");
        std::vector<kv> mine, owner;
        if (ok) {
            my_rev_ = header_rev;
        } else {
            if (!kvs_of(rs.at(0).at("response_range"), mine) || mine.empty())
                return failed(errc::bad_reply, "the lock's key vanished inside a transaction");
            if (creates_ == 1) {
                // Our key exists before we created it: left by an earlier
                // holder of this session whose delete did not get through.
                // Adopting it would hand out its fencing token again: delete
                // it (guarded by its revision), then create ours.
                step_ = step::clear_stale;
                body_ = request::release(key_, mine[0].create_revision);
                return std::make_error_code(std::errc::operation_in_progress);
            }
            my_rev_ = mine[0].create_revision;  // our create's answer was lost
        }
        if (!kvs_of(rs.at(1).at("response_range"), owner))
            return failed(errc::bad_reply, "malformed key");
        if (!kind_.one_holder()) return decide(owner, header_rev);
        if (owner.empty() || owner[0].create_revision == my_rev_) return won(header_rev);
        holder_ = name_of(owner[0]);
        // Contended: find the predecessor at once.
        step_ = step::predecessor;
        body_ = request::predecessor(key_, my_rev_, prefix_);
        return std::make_error_code(std::errc::operation_in_progress);
    }

    std::error_code predecessor(const json& j) {
        const std::int64_t header_rev = int64_of(j.at("header"), "revision");
        if (!j.value("succeeded", false)) {
            // Our key is gone: the lease expired (or it was deleted) while we
            // waited. Never a win (etcd issue #9921).
            my_rev_ = 0;
            why_ = "the lock's key " + key_ + " was deleted while waiting (lease expired?)";
            return errc::lost;
        }
        std::vector<kv> pred, owner;
        const auto& rs = j.at("responses");
        if (!kind_.one_holder()) {
            if (!kvs_of(rs.at(0).at("response_range"), pred))
                return failed(errc::bad_reply, "malformed key");
            return decide(pred, header_rev);
        }
        if (!kvs_of(rs.at(0).at("response_range"), pred) ||
            (rs.size() > 1 && !kvs_of(rs.at(1).at("response_range"), owner)))
            return failed(errc::bad_reply, "malformed key");
        if (pred.empty()) return won(header_rev);
        if (!owner.empty()) holder_ = name_of(owner[0]);
        // A deletion the watch already reported (after this answer's
        // revision) stands; otherwise this is the predecessor to wait for.
        if (!(pred_deleted_ && pred[0].key == pred_key_ && pred_deleted_at_ > header_rev)) {
            pred_key_ = pred[0].key;
            pred_rev_ = header_rev;
            pred_deleted_ = false;
        }
        pred_was_owner_ = !owner.empty() && owner[0].create_revision == pred[0].create_revision;
        if (watch_key_.empty()) {
            // The whole prefix, from the first contended answer on: one stream
            // sees every predecessor's deletion, and our own key's.
            watch_key_ = prefix_;
            watch_end_ = prefix_end(prefix_);
            watch_rev_ = header_rev + 1;
        }
        return filelock::errc::locked;
    }

    // The kinds other than one holder: the keys read at `rev` (by create
    // revision; later ones than ours are left out) decide; contended, the
    // earlier ones are the set the watch's deletions shrink.
    std::error_code decide(const std::vector<kv>& keys, std::int64_t rev) {
        earlier_.clear();
        for (const auto& k : keys)
            if (k.create_revision < my_rev_ && k.key != key_)
                earlier_.emplace(k.create_revision, std::make_pair(k.key, kind_of(k.value)));
        snapshot_rev_ = rev;
        admitted_at_ = 0;
        // Deletions the watch already reported after this answer stand.
        std::erase_if(seen_, [rev](const auto& d) { return d.second <= rev; });
        for (const auto& [key, at] : seen_) erase_earlier(key);
        if (admitted()) {
            slot_ = static_cast<unsigned>(earlier_.size());
            return won(std::max(rev, seen_.empty() ? rev : seen_.back().second));
        }
        contended_ = true;
        // The holders ahead name it (their contents, or their keys): each
        // earlier key that its own kind admits beside the keys before it.
        holder_.clear();
        std::vector<key_kind> ahead;
        for (const auto& [rev, e] : earlier_) {
            const lock_kind as{e.second.shared ? lock_mode::shared : lock_mode::exclusive,
                               e.second.slots == 0 ? 1 : e.second.slots};
            if (!admits(as, ahead)) break;
            ahead.push_back(e.second);
            for (const auto& k : keys) {
                if (k.key != e.first) continue;
                std::string n = name_of(k);  // " 1234@host\n": one line of the list
                n.erase(0, n.find_first_not_of(" \n"));
                n.erase(n.find_last_not_of(" \n") + 1);
                holder_ += (holder_.empty() ? "" : ", ") + n;
            }
        }
        std::string key, end;
        watch_target(key, end);
        if (key != watch_key_ || end != watch_end_) {
            watch_key_ = std::move(key);
            watch_end_ = std::move(end);
            watch_rev_ = rev + 1;
        }
        return filelock::errc::locked;
    }

    // What a waiter not admitted watches (see the top of this file): one key
    // (`end` empty) or the prefix.
    void watch_target(std::string& key, std::string& end) const {
        const bool reader = kind_.mode == lock_mode::shared;
        const std::string* blocker = nullptr;
        for (const auto& [rev, e] : earlier_)
            if (reader ? !e.second.shared : e.second.slots == 0) blocker = &e.first;
        if (blocker) {
            key = *blocker;
            return;
        }
        if (!reader && earlier_.size() > kind_.slots) {
            const auto& last = earlier_.rbegin()->second;
            if (last.second.slots == kind_.slots) {
                key = last.first;
                return;
            }
        }
        key = prefix_;
        end = prefix_end(prefix_);
    }

    bool admitted() const {
        std::vector<key_kind> kinds;
        kinds.reserve(earlier_.size());
        for (const auto& [rev, k] : earlier_) kinds.push_back(k.second);
        return admits(kind_, kinds);
    }

    bool erase_earlier(const std::string& key) {
        for (auto it = earlier_.begin(); it != earlier_.end(); ++it)
            if (it->second.first == key) {
                earlier_.erase(it);
                return true;
            }
        return false;
    }

    bool earlier_deleted(const std::string& key, std::int64_t revision) {
        if (my_rev_ == 0 || revision <= snapshot_rev_) return false;
        seen_.emplace_back(key, revision);
        if (!erase_earlier(key) || admitted_at_ || !admitted()) return false;
        admitted_at_ = revision;
        slot_ = static_cast<unsigned>(earlier_.size());
        return true;
    }

    std::error_code won(std::int64_t header_rev) {
        if (!lease_state_->live(lease_, lease_clock::now())) {
            // The lease may have expired on the server meanwhile, and our key
            // with it: another may hold the lock now (etcd issue #19597).
            lease_gone_ = true;
            why_ = "the session's lease expired before the lock was won";
            return errc::lost;
        }
        won_at_ = header_rev;
        return {};
    }

    claims* claims_;
    const void* session_;
    const lease_state* lease_state_;
    std::string name_, prefix_, key_, value_;
    std::int64_t lease_;
    std::int64_t my_rev_ = 0, won_at_ = 0;
    step step_ = step::create;
    std::string path_, body_;
    http_reply reply_;
    std::string watch_key_, watch_end_, watched_key_;
    std::string pred_key_;
    std::int64_t pred_rev_ = 0, pred_deleted_at_ = 0;
    bool pred_deleted_ = false, pred_was_owner_ = false, own_deleted_ = false;
    std::int64_t watch_rev_ = 0;
    std::string holder_, why_;
    bool claimed_ = false;
    bool lease_gone_ = false;
    bool answered_ = false;
    std::error_code unanswered_;
    int creates_ = 0;  // acquire transactions sent
    lock_kind kind_;
    unsigned slot_ = 0;
    // The kinds other than one holder: the earlier keys by create revision
    // (key, kind) as of snapshot_rev_, the deletions seen since, and the
    // revision of the one that admitted this waiter.
    std::map<std::int64_t, std::pair<std::string, key_kind>> earlier_;
    std::vector<std::pair<std::string, std::int64_t>> seen_;
    std::int64_t snapshot_rev_ = 0, admitted_at_ = 0;
    bool contended_ = false;  // turned away once (not the one-holder kind)
};

using etcd_acquire = filelock::detail::acquire<lock_backend>;

}  // namespace filelock::etcd::detail
