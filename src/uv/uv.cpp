// SPDX-License-Identifier: MIT
// The libuv driver: an executor of the acquire state machine on a uv loop.
// It arms the uv timer and the release watch the machine asks for, routes
// cancellations and queue turns through one uv_async_t per loop, and delivers
// the completion on the loop's thread.
#include <filelock/detail/file_acquisition.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/detail/release_source.hpp>
#include <filelock/uv.hpp>

#include "../platform.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <exception>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace filelock::uv {
namespace detail {

using filelock::detail::action;
using filelock::detail::clock;
using filelock::detail::wake_reason;

struct op;
struct loop_state;

// What request handles share with the operation. `target` is cleared (under
// the mutex) when the operation completes, so no signal can reach an
// operation that is closing.
struct control {
    std::mutex mutex;
    op* target = nullptr;
    std::atomic<bool> cancel_requested{false};
};

namespace {

std::mutex registry_mutex;
std::unordered_map<uv_loop_t*, loop_state*> loops;  // loops with pending operations
std::atomic<std::uint64_t> next_arrival{0};

void after_fork_in_child() noexcept;

// The registry's mutex is held across fork(), so that a child never inherits
// it locked by another thread.
const bool atfork_registered = [] {
    ::pthread_atfork([] { registry_mutex.lock(); }, [] { registry_mutex.unlock(); },
                     [] {
                         registry_mutex.unlock();
                         after_fork_in_child();
                     });
    return true;
}();

// libuv calls us from C frames, which an exception must never cross. Ours
// (out of memory) end the operation with an error; one escaping the user's
// callback ends the program, as a noexcept function would, saying why.
[[noreturn]] void callback_threw() noexcept {
    std::fputs(
        "filelock::uv: an exception escaped a completion callback; it cannot cross "
        "libuv's C frames\n",
        stderr);
    std::terminate();
}

}  // namespace

// A loop's shared handles, alive while the loop has pending operations (so
// that an idle loop can close):
//  - one uv_async_t through which other threads (cancel) and the local queue
//    (your turn) signal operations: one handle for all, not one per
//    operation (libuv scans every async handle of a loop on each wake-up);
//  - one release source, polled with uv_poll_t (uv_fs_event does not report
//    close events), taken at the first wait and given back to the process's
//    idle one when the loop has no operation (never closed on the way from a
//    release to the next holder).
struct watch_poll {
    uv_poll_t handle{};
    std::unique_ptr<filelock::detail::release_source> source;
    loop_state* ls = nullptr;
};

struct loop_state {
    explicit loop_state(uv_loop_t* l) : loop(l) {}

    uv_loop_t* loop;
    uv_async_t async{};
    watch_poll* poll = nullptr;  // while polling
    bool watch_failed = false;   // no inotify here: the backoff alone
    int open_handles = 0;
    bool closing = false;
    std::unordered_set<op*> ops;  // pending (loop thread only)
    std::thread::id thread;       // the loop's thread (where async_lock is called)
    unsigned generation = filelock::detail::fork_generation();

    std::mutex mutex;  // guards what follows and the operations' signal flags
    std::vector<op*> signalled;
    // on_async is handling signals on `dispatcher`: a signal from that thread
    // is seen before it returns, without another uv_async_send.
    bool dispatching = false;
    std::thread::id dispatcher;

    static loop_state* of(uv_loop_t* loop);
    void signal(op* o, bool turn) noexcept;
    void forget_signal(op* o) noexcept;
    filelock::detail::release_source* source();
    bool check_fork() noexcept;
    void close_poll() noexcept;
    void close_if_idle() noexcept;

    static void on_async(uv_async_t* a);
    static void on_poll(uv_poll_t* p, int status, int);
    static void on_close(uv_handle_t* h) {
        auto* self = static_cast<loop_state*>(h->data);
        if (--self->open_handles == 0) delete self;
    }
    static void on_poll_close(uv_handle_t* h) {
        auto* wp = static_cast<watch_poll*>(h->data);
        loop_state* self = wp->ls;
        // Back to the process's idle one, unless this is a forked child's
        // copy of its parent's (then closed here).
        filelock::detail::release_source::recycle(std::move(wp->source));
        delete wp;
        if (--self->open_handles == 0) delete self;
    }
};

struct op final : filelock::detail::queue_waiter {
    op(uv_loop_t* loop, const std::filesystem::path& path, std::chrono::nanoseconds timeout,
       const lock_options& options, callback cb)
        : shared(options.mode == lock_mode::shared),
          acq(std::in_place, path, timeout, options),
          callback(std::move(cb)),
          ctl(std::make_shared<control>()) {
        acq->use_queue(this, loop);
    }

    loop_state* ls = nullptr;
    uv_timer_t timer{};
    bool finished = false;
    bool delivering = false;  // done inside async_lock(): delivered on the next iteration
    bool starting = false;    // inside async_lock(): an outcome waits for the next iteration
    bool on_release = false;  // the current wait ends on a release event
    bool moved = false;       // its watch was dropped (a fork): resumed as `moved`
    const bool shared;
    bool watching = false;  // registered for release events
    std::uint64_t arrival = next_arrival++;
    std::optional<filelock::detail::file_acquisition> acq;
    uv::callback callback;
    std::shared_ptr<control> ctl;
    // Under ls->mutex:
    bool in_signalled = false;
    bool turn = false;  // the local queue woke it

    void wake() noexcept override { ls->signal(this, true); }

    static void on_timer(uv_timer_t* t) {
        auto* o = static_cast<op*>(t->data);
        if (o->ls->check_fork() && o->finished) return;
        o->resume(std::exchange(o->moved, false) ? wake_reason::moved
                  : o->delivering                ? wake_reason::deliver
                                                 : wake_reason::timer);
    }
    static void on_close(uv_handle_t* h) { delete static_cast<op*>(h->data); }

    // Feeds the machine what happened (a cancellation wins) and runs what
    // it answers.
    void resume(wake_reason why) noexcept {
        delivering = false;
        try {
            const auto now = clock::now();
            run(ctl->cancel_requested.load()
                    ? acq->resume({wake_reason::cancel, now,
                                   std::make_error_code(std::errc::operation_canceled)})
                    : acq->resume({why, now}));
        } catch (...) {  // out of memory in the machine or a watch
            finish(std::make_error_code(std::errc::not_enough_memory));
        }
    }

    void run(action next) {
        for (;;) {
            switch (next.what) {
                case action::kind::watch:
                    next = acq->resume(
                        {watch_release() ? wake_reason::watched : wake_reason::unwatched,
                         clock::now()});
                    continue;
                case action::kind::wait:
                    on_release = next.on_release;
                    return start_timer(next.until);
                case action::kind::send:  // the file backend never sends
                    return finish(std::make_error_code(std::errc::function_not_supported));
                case action::kind::done:
                    if (starting) {
                        // Never from inside async_lock() (the attempt made once
                        // the watch is set up may win): the machine delivers
                        // its outcome again then.
                        delivering = true;
                        return uv_timer_start(&timer, on_timer, 0, 0), void();
                    }
                    return finish(next.ec);
            }
        }
    }

    void start_timer(clock::time_point until) {
        // uv timers count whole milliseconds: a shorter wait (the quick
        // retries after a release event) becomes "next loop iteration".
        using namespace std::chrono;
        if (until == clock::time_point::max()) return uv_timer_stop(&timer), void();
        const auto delay = until - clock::now();
        const auto ms = delay < 1ms ? std::uint64_t{0}
                                    : static_cast<std::uint64_t>(ceil<milliseconds>(delay).count());
        uv_timer_start(&timer, on_timer, ms, 0);
    }

    // Watching again replaces the watch (its target changed: a queue turn).
    bool watch_release() {
        auto* src = ls->source();
        // No events (or no watch of this file): the backoff alone.
        filelock::detail::lock_identity lock{};
        (void)acq->identity(lock);  // (its backend and range matter here)
        watching = src && src->watch(acq->path(), this, arrival, shared, lock, acq->queue_turn());
        return watching;
    }

    void unwatch() noexcept {
        if (!watching) return;
        if (ls->poll) ls->poll->source->unwatch(this);
        watching = false;
    }

    void finish(std::error_code ec) noexcept {
        finished = true;
        {
            std::lock_guard<std::mutex> g(ctl->mutex);
            ctl->target = nullptr;
        }
        // Cancelled from another thread while the attempt was winning: the
        // machine releases the won lock.
        if (!ec && ctl->cancel_requested.load()) {
            try {
                ec = acq->resume({wake_reason::cancel, clock::now(),
                                  std::make_error_code(std::errc::operation_canceled)})
                         .ec;
            } catch (...) {
                ec = std::make_error_code(std::errc::operation_canceled);
            }
        }
        lock_file lock = ec ? lock_file() : acq->take();
        acq.reset();  // leaves the queue; closes the waiter's descriptor now
        ls->forget_signal(this);
        ls->ops.erase(this);
        uv::callback cb = std::move(callback);
        uv_close(reinterpret_cast<uv_handle_t*>(&timer), on_close);  // freed after this call
        if (cb) {
            try {
                cb(ec, std::move(lock));
            } catch (...) {
                callback_threw();
            }
        }
        // Watch clean-up after the callback: it is not on the way from the
        // release to the new holder.
        unwatch();
        ls->close_if_idle();  // the loop's last operation: let it close
    }
};

loop_state* loop_state::of(uv_loop_t* loop) {
    std::lock_guard<std::mutex> g(registry_mutex);
    (void)atfork_registered;
    if (auto it = loops.find(loop); it != loops.end()) return it->second;
    // Every allocation before the handle joins the loop: nothing can throw
    // after uv_async_init, which libuv cannot undo without a close.
    auto s = std::make_unique<loop_state>(loop);
    auto slot = loops.emplace(loop, nullptr).first;
    if (int rc = uv_async_init(loop, &s->async, on_async); rc != 0) {
        loops.erase(slot);
        throw std::system_error(-rc, std::system_category(), "filelock::uv: uv_async_init");
    }
    s->async.data = s.get();
    s->open_handles = 1;
    slot->second = s.get();
    return s.release();  // freed in on_close
}

void loop_state::signal(op* o, bool turn) noexcept {
    {
        std::lock_guard<std::mutex> g(mutex);
        // The application closed our handles itself (uv_walk closing every
        // handle at shutdown): its operations are abandoned, and a send on
        // a closed handle would abort. Only the handle's own memory (ours)
        // is read, not the loop's.
        if (uv_is_closing(reinterpret_cast<const uv_handle_t*>(&async))) return;
        if (turn) o->turn = true;
        if (!o->in_signalled) {
            o->in_signalled = true;
            try {
                signalled.push_back(o);
            } catch (...) {
                // Out of memory: the operation goes on at its timer.
                o->in_signalled = false;
                return;
            }
        }
        if (dispatching && dispatcher == std::this_thread::get_id()) return;
    }
    uv_async_send(&async);
}

void loop_state::forget_signal(op* o) noexcept {
    std::lock_guard<std::mutex> g(mutex);
    if (!o->in_signalled) return;
    o->in_signalled = false;
    signalled.erase(std::find(signalled.begin(), signalled.end(), o));
}

void loop_state::on_async(uv_async_t* a) {
    auto* self = static_cast<loop_state*>(a->data);
    // Signals raised while handling these (a finished head makes the next
    // one the head) are handled in this same pass: the new head makes its
    // first attempt, and opens its descriptor, before the lock is released.
    std::vector<std::pair<op*, bool>> ready;  // operation, its turn
    for (;;) {
        {
            std::lock_guard<std::mutex> g(self->mutex);
            try {
                ready.clear();
                ready.reserve(self->signalled.size());
            } catch (...) {
                return;  // out of memory: retried at the next signal
            }
            for (op* o : self->signalled) {
                o->in_signalled = false;
                ready.emplace_back(o, std::exchange(o->turn, false));
            }
            self->signalled.clear();
            self->dispatching = !ready.empty();
            self->dispatcher = std::this_thread::get_id();
        }
        if (ready.empty()) return;
        for (auto [o, turn] : ready) {
            if (o->finished) continue;  // cancel_all() or a callback ended it meanwhile
            if (!turn && !o->ctl->cancel_requested.load()) continue;
            uv_timer_stop(&o->timer);
            o->resume(wake_reason::turn);  // a cancellation is seen first
        }
    }
}

filelock::detail::release_source* loop_state::source() {
    if (!poll && !watch_failed) {
        auto wp = std::make_unique<watch_poll>();
        wp->ls = this;
        wp->handle.data = wp.get();
        // Its descriptor is the loop's: uv_loop_fork() polls it in the
        // child, which closes it in check_fork().
        wp->source = filelock::detail::release_source::take(
            filelock::detail::release_source::fork_copies::closed_by_loop);
        filelock::detail::release_source::start_lingering();
        if (!wp->source || uv_poll_init(loop, &wp->handle, wp->source->native_handle()) != 0) {
            watch_failed = true;
            return nullptr;
        }
        ++open_handles;
        poll = wp.release();  // freed in on_poll_close
        uv_poll_start(&poll->handle, UV_READABLE, on_poll);
    }
    return poll ? poll->source.get() : nullptr;
}

void loop_state::close_poll() noexcept {
    if (!poll) return;
    // Operations still registered (finishing: a completion callback called
    // cancel_all() before their own clean-up) are forgotten here, while the
    // source is at hand: nothing of theirs goes back to the idle instance.
    for (auto* key : poll->source->forget_all()) {
        auto* o = const_cast<op*>(static_cast<const op*>(key));
        o->watching = false;
    }
    // A forked child's copy is closed in on_poll_close (recycle() keeps no
    // inherited instance), after uv_close took it out of the loop's epoll set.
    uv_close(reinterpret_cast<uv_handle_t*>(&poll->handle), on_poll_close);
    poll = nullptr;
}

// fork(): a child shares its parent's inotify instance (and its events). On
// the child's first step it closes its copy (uv_loop_fork gave the loop an
// epoll set of its own, so this touches nothing of the parent's) and its
// operations watch anew on an instance of its own. Their descriptors, shared
// with the parent, are replaced at their next attempt (file_backend).
bool loop_state::check_fork() noexcept {
    const unsigned now = filelock::detail::fork_generation();
    if (generation == now) return false;
    generation = now;
    // Those that were watching watch anew (on a source of the child's own),
    // at their next step.
    if (poll)
        for (auto* key : poll->source->forget_all()) {
            auto* o = const_cast<op*>(static_cast<const op*>(key));
            o->watching = false;
            o->moved = true;
            uv_timer_start(&o->timer, op::on_timer, 0, 0);
        }
    close_poll();
    watch_failed = false;
    return true;
}

void loop_state::on_poll(uv_poll_t* p, int status, int) {
    auto* self = static_cast<watch_poll*>(p->data)->ls;
    if (status < 0 || self->check_fork()) return;
    std::vector<filelock::detail::release_source::wakeup> woken;
    try {
        woken = self->poll->source->read();
    } catch (...) {
        return;  // out of memory: the operations go on at their timers
    }
    // The path may name another file now: those watch anew (the source
    // forgot them). A plain close event keeps the watch.
    for (auto [key, moved] : woken) {
        auto* o = const_cast<op*>(static_cast<const op*>(key));
        if (moved) o->watching = false;
        if (o->finished || (!moved && !o->on_release)) continue;
        uv_timer_stop(&o->timer);
        o->resume(moved ? wake_reason::moved : wake_reason::release);
    }
}

namespace {

// In a forked child, the operations of the loops run by the forking thread
// (the child's only thread) step again on their next loop iteration: a
// waiter whose turn would have come from the parent's queue joins the
// child's instead of waiting for a turn that never comes. Loops of other
// threads are left alone: the child has no thread to run them.
void after_fork_in_child() noexcept {
    const auto me = std::this_thread::get_id();
    for (auto& [loop, ls] : loops) {
        if (ls->thread != me) continue;
        for (op* o : ls->ops)
            if (!o->finished) uv_timer_start(&o->timer, op::on_timer, 0, 0);
    }
}

}  // namespace

void loop_state::close_if_idle() noexcept {
    if (!ops.empty() || closing) return;
    closing = true;
    {
        std::lock_guard<std::mutex> g(registry_mutex);
        if (auto it = loops.find(loop); it != loops.end() && it->second == this) loops.erase(it);
    }
    close_poll();
    uv_close(reinterpret_cast<uv_handle_t*>(&async), on_close);
}

}  // namespace detail

request async_lock(uv_loop_t* loop, const std::filesystem::path& path,
                   std::chrono::nanoseconds timeout, const lock_options& options, callback cb) {
    auto o = std::make_unique<detail::op>(loop, path, timeout, options, std::move(cb));
    detail::loop_state* ls = detail::loop_state::of(loop);
    try {
        ls->ops.insert(o.get());  // the last allocation
    } catch (...) {
        ls->close_if_idle();
        throw;
    }
    // From here on nothing throws: the timer joins the loop, and the
    // operation is owned by it (freed in on_close).
    request req(o->ctl);
    ls->thread = std::this_thread::get_id();
    o->ls = ls;
    o->timer.data = o.get();
    uv_timer_init(loop, &o->timer);
    o->ctl->target = o.get();
    detail::op* op = o.release();
    // The timeout counts from now, and a waiter lines up behind this domain's
    // waiters in the order of these calls: the machine starts here. An
    // outcome reached here (a lock won at once, or by the attempt made once
    // the watch is set up) is delivered on the next loop iteration, never
    // from inside this call, and a cancel() made before then releases it
    // again.
    op->starting = true;
    try {
        op->run(op->acq->resume({detail::wake_reason::start, detail::clock::now()}));
        op->starting = false;
    } catch (...) {
        op->starting = false;
        op->delivering = true;  // delivers the machine's outcome on the next iteration
        uv_timer_start(&op->timer, detail::op::on_timer, 0, 0);
    }
    return req;
}

void request::cancel() const noexcept {
    if (!control_) return;
    std::lock_guard<std::mutex> g(control_->mutex);
    control_->cancel_requested.store(true);
    if (control_->target) control_->target->ls->signal(control_->target, false);
}

void request::abandon() const noexcept {
    if (!control_) return;
    std::lock_guard<std::mutex> g(control_->mutex);
    control_->cancel_requested.store(true);
    if (control_->target) {
        uv::callback dropped = std::move(control_->target->callback);  // never called
        control_->target->ls->signal(control_->target, false);
    }
}

bool request::pending() const noexcept {
    if (!control_) return false;
    std::lock_guard<std::mutex> g(control_->mutex);
    return control_->target != nullptr;
}

void cancel_all(uv_loop_t* loop) noexcept {
    detail::loop_state* ls = nullptr;
    {
        std::lock_guard<std::mutex> g(detail::registry_mutex);
        if (auto it = detail::loops.find(loop); it != detail::loops.end()) ls = it->second;
    }
    if (!ls) return;
    std::vector<detail::op*> ops;
    try {
        ops.assign(ls->ops.begin(), ls->ops.end());
    } catch (...) {
        // Out of memory: one at a time.
        while (!ls->ops.empty()) {
            detail::op* o = *ls->ops.begin();
            o->ctl->cancel_requested.store(true);
            o->finish(std::make_error_code(std::errc::operation_canceled));
        }
        return;
    }
    for (auto* o : ops) {
        if (o->finished) continue;  // a callback of this loop already ended it
        o->ctl->cancel_requested.store(true);
        o->finish(std::make_error_code(std::errc::operation_canceled));
    }
}

}  // namespace filelock::uv
