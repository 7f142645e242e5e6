// SPDX-License-Identifier: MIT
#include <filelock/detail/file_target.hpp>
#include <filelock/detail/local_queue.hpp>
#include <filelock/detail/release_watcher.hpp>
#include <filelock/uv.hpp>

#include "../sys.hpp"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <pthread.h>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace filelock::uv {
namespace detail {

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

}  // namespace

// A loop's shared handles, alive while the loop has pending operations (so
// that an idle loop can close):
//  - one uv_async_t through which other threads (cancel) and the local queue
//    (your turn) signal operations: one handle for all, not one per
//    operation (libuv scans every async handle of a loop on each wake-up);
//  - one inotify instance, polled with uv_poll_t (uv_fs_event does not report
//    close events), created at the first wait.
struct watch_poll {
    uv_poll_t handle{};
    filelock::detail::release_watcher watcher;
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

    std::unordered_multimap<int, op*> waiting;  // watch descriptor -> operations

    static loop_state* of(uv_loop_t* loop);
    void signal(op* o, bool turn) noexcept;
    void forget_signal(op* o) noexcept;
    filelock::detail::release_watcher* release_watcher();
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
        delete wp;  // closes this process's copy of the instance
        if (--self->open_handles == 0) delete self;
    }
};

struct op final : filelock::detail::queue_waiter {
    op(filelock::detail::acquisition a, completion cb)
        : acq(std::in_place, std::move(a)),
          callback(std::move(cb)),
          ctl(std::make_shared<control>()) {}

    loop_state* ls = nullptr;
    uv_timer_t timer{};
    bool finished = false;
    bool may_queue = false;                  // a timed exclusive attempt
    bool queued = false;                     // in the path's local queue
    bool head = false;                       // its head: may attempt
    int wd = -1;                             // watch descriptor while registered for release events
    std::uint64_t arrival = next_arrival++;  // order of the operations' starts
    std::optional<filelock::detail::acquisition> acq;
    completion callback;
    std::shared_ptr<control> ctl;
    // Under ls->mutex:
    bool in_signalled = false;
    bool turn = false;  // the local queue woke it

    void wake() noexcept override { ls->signal(this, true); }

    static void on_timer(uv_timer_t* t) { static_cast<op*>(t->data)->step(false); }
    static void on_close(uv_handle_t* h) { delete static_cast<op*>(h->data); }

    void step(bool woken) {
        using namespace std::chrono_literals;
        ls->check_fork();
        // A forked child's copy of a queued operation: the parent's queue is
        // gone, it joins the child's.
        if (queued && !joined()) queued = head = false;
        if (ctl->cancel_requested.load())
            return finish(std::make_error_code(std::errc::operation_canceled), {});
        const auto now = filelock::detail::clock::now();
        if (may_queue && !queued && filelock::detail::local_waiters() > 0) enqueue();
        if (queued && !head) head = is_head();
        if (queued && !head) return wait_turn(now);
        if (queued) {
            // The queue yields this turn to other processes for a moment.
            if (const auto d = hold_off(); d > d.zero())
                return start_timer(std::max<filelock::detail::clock::duration>(d, 1ms));
        }
        const auto next = acq->resume(now, woken, wd >= 0);
        if (next.is_done()) return finish(next.ec, next.ec ? lock_file() : acq->target().take());
        if (may_queue && !queued) {
            // Contention: from now on, wait in the queue.
            enqueue();
            if (!head) {
                acq->target().drop_file();  // the head's descriptor is the only one
                return wait_turn(now);
            }
        }
        watch_release();
        start_timer(next.delay);
    }

    // Timed exclusive attempts queue once there is contention, or at once
    // when this process already has waiters.
    void enqueue() {
        queued = true;
        head = join(acq->target().path());
    }

    // Not our turn: only the deadline (or the queue) ends the wait.
    void wait_turn(filelock::detail::clock::time_point now) {
        if (acq->expired(now)) return finish(errc::timeout, {});
        if (acq->deadline() != filelock::detail::clock::time_point::max())
            start_timer(acq->deadline() - now);
    }

    void start_timer(filelock::detail::clock::duration delay) {
        // uv timers count whole milliseconds: a shorter wait (the quick
        // retries after a release event) becomes "next loop iteration".
        using namespace std::chrono;
        const auto ms = delay < 1ms ? std::uint64_t{0}
                                    : static_cast<std::uint64_t>(ceil<milliseconds>(delay).count());
        uv_timer_start(&timer, on_timer, ms, 0);
    }

    void watch_release() {
        if (wd >= 0 || !acq->target().wake_on_release()) return;
        auto* w = ls->release_watcher();
        if (!w) return;  // no events: the backoff alone
        wd = w->add(acq->target().path());
        if (wd < 0) return;
        ls->waiting.emplace(wd, this);
        watching.store(true);
    }

    void unwatch() {
        if (wd < 0) return;
        auto [b, e] = ls->waiting.equal_range(wd);
        for (auto it = b; it != e; ++it)
            if (it->second == this) {
                ls->waiting.erase(it);
                break;
            }
        if (ls->poll) ls->poll->watcher.remove(wd);
        wd = -1;
        watching.store(false);
    }

    void finish(std::error_code ec, lock_file lock) {
        finished = true;
        {
            std::lock_guard<std::mutex> g(ctl->mutex);
            ctl->target = nullptr;
        }
        // Cancelled from another thread while the attempt was winning: release.
        if (!ec && ctl->cancel_requested.load()) {
            lock.close();
            ec = std::make_error_code(std::errc::operation_canceled);
        }
        leave();  // the next local waiter attempts now
        ls->forget_signal(this);
        ls->ops.erase(this);
        completion cb = std::move(callback);
        acq.reset();  // closes the waiter's descriptor now
        uv_close(reinterpret_cast<uv_handle_t*>(&timer), on_close);  // freed after this call
        if (cb) cb(ec, std::move(lock));
        // Watch clean-up after the callback: it is not on the way from the
        // release to the new holder.
        unwatch();
        ls->close_if_idle();  // the loop's last operation: let it close
    }
};

loop_state* loop_state::of(uv_loop_t* loop) {
    std::lock_guard<std::mutex> g(registry_mutex);
    if (auto it = loops.find(loop); it != loops.end()) return it->second;
    auto s = std::make_unique<loop_state>(loop);
    if (int rc = uv_async_init(loop, &s->async, on_async); rc != 0)
        throw std::system_error(-rc, std::system_category(), "filelock::uv: uv_async_init");
    s->async.data = s.get();
    s->open_handles = 1;
    loops.emplace(loop, s.get());
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
            signalled.push_back(o);
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
    for (std::vector<std::pair<op*, bool>> ready;;) {  // operation, its turn
        ready.clear();
        {
            std::lock_guard<std::mutex> g(self->mutex);
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
            if (o->ctl->cancel_requested.load()) {
                o->finish(std::make_error_code(std::errc::operation_canceled), {});
            } else if (turn) {
                uv_timer_stop(&o->timer);
                o->head = true;
                o->step(false);
            }
        }
    }
}

filelock::detail::release_watcher* loop_state::release_watcher() {
    if (!poll && !watch_failed) {
        auto wp = std::make_unique<watch_poll>();
        wp->ls = this;
        wp->handle.data = wp.get();
        if (!wp->watcher.valid() ||
            uv_poll_init(loop, &wp->handle, wp->watcher.native_handle()) != 0) {
            watch_failed = true;
            return nullptr;
        }
        ++open_handles;
        poll = wp.release();  // freed in on_poll_close
        uv_poll_start(&poll->handle, UV_READABLE, on_poll);
    }
    return poll ? &poll->watcher : nullptr;
}

void loop_state::close_poll() noexcept {
    if (!poll) return;
    uv_close(reinterpret_cast<uv_handle_t*>(&poll->handle), on_poll_close);
    poll = nullptr;
}

// fork(): a child shares its parent's inotify instance (and its events). On
// the child's first step it closes its copy (uv_loop_fork gave the loop an
// epoll set of its own, so this touches nothing of the parent's) and its
// operations watch anew on an instance of its own. Their descriptors, shared
// with the parent, are replaced at their next attempt (file_target).
bool loop_state::check_fork() noexcept {
    const unsigned now = filelock::detail::fork_generation();
    if (generation == now) return false;
    generation = now;
    for (auto& [wd, o] : waiting) {
        o->wd = -1;
        o->watching.store(false);
    }
    waiting.clear();
    close_poll();
    watch_failed = false;
    return true;
}

void loop_state::on_poll(uv_poll_t* p, int status, int) {
    auto* self = static_cast<watch_poll*>(p->data)->ls;
    if (status < 0 || self->check_fork()) return;
    std::vector<op*> woken;
    std::vector<op*> moved;
    for (const auto& ev : self->poll->watcher.drain()) {
        auto [b, e] = self->waiting.equal_range(ev.wd);
        op* first = nullptr;
        for (auto it = b; it != e; ++it) {
            if (ev.moved) {
                moved.push_back(it->second);
                woken.push_back(it->second);
            } else if (!first || it->second->arrival < first->arrival) {
                first = it->second;
            }
        }
        // A release lets one waiter in: wake the longest-waiting one only
        // (waking all of them would make N waiters cost N attempts per
        // release). The others keep their fallback timers.
        if (first) woken.push_back(first);
    }
    // The path may name another file now: those watch anew on their next
    // wait. A plain close event keeps the watch.
    for (op* o : moved) {
        o->unwatch();
        o->acq->target().drop_file();  // wait on the file the path names now
    }
    for (op* o : woken)
        if (!o->finished) {
            uv_timer_stop(&o->timer);
            o->step(true);
        }
}

namespace {

// In a forked child, the operations of the loops run by the forking thread
// (the child's only thread) step again on their next loop iteration: a
// waiter whose turn would have come from the parent's queue joins the
// child's instead of waiting for a turn that never comes. Loops of other
// threads are left alone: the child has no thread to run them.
void after_fork_in_child() noexcept {
    (void)atfork_registered;
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

request start(uv_loop_t* loop, const std::filesystem::path& path, std::chrono::nanoseconds timeout,
              const lock_options& options, detail::completion callback) {
    auto o = std::make_unique<detail::op>(
        filelock::detail::make_acquisition(path, timeout, options), std::move(callback));
    detail::loop_state* ls = detail::loop_state::of(loop);
    ls->thread = std::this_thread::get_id();
    o->ls = ls;
    o->timer.data = o.get();
    uv_timer_init(loop, &o->timer);
    // The timeout counts from now. While this process has waiters, timed
    // exclusive attempts line up behind them in the order of these calls.
    o->acq->start(filelock::detail::clock::now());
    o->may_queue = filelock::detail::may_queue(*o->acq);
    if (o->may_queue && filelock::detail::local_waiters() > 0) o->enqueue();
    // The first step runs on the next loop iteration: the callback is never
    // invoked from inside this call, and a cancel() made right after it
    // returns is seen before any attempt.
    uv_timer_start(&o->timer, detail::op::on_timer, 0, 0);
    o->ctl->target = o.get();
    ls->ops.insert(o.get());
    request req(o->ctl);
    o.release();  // owned by its timer from now on: freed in on_close
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
        control_->target->callback = {};
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
    std::vector<detail::op*> ops(ls->ops.begin(), ls->ops.end());
    for (auto* o : ops) {
        if (o->finished) continue;  // a callback of this loop already ended it
        o->ctl->cancel_requested.store(true);
        o->finish(std::make_error_code(std::errc::operation_canceled), {});
    }
}

}  // namespace filelock::uv
