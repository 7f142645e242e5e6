#include <filelock/detail/file_target.hpp>
#include <filelock/detail/release_watcher.hpp>
#include <filelock/uv.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace filelock::uv {
namespace detail {

struct op;

// What request handles share with the operation. `op` is cleared (under the
// mutex) when the operation completes, so no uv_async_send can reach a handle
// that is closing.
struct control {
    std::mutex mutex;
    op* target = nullptr;
    std::atomic<bool> cancel_requested{false};
};

namespace {

// Pending operations per loop, for cancel_all(), and each loop's watcher.
std::mutex registry_mutex;
std::unordered_multimap<uv_loop_t*, op*> registry;

// One inotify instance per loop, polled with uv_poll_t (uv_fs_event does not
// report close events). It exists only while the loop has operations, so
// that the loop can close.
struct loop_watch {
    uv_loop_t* loop;
    uv_poll_t poll{};
    filelock::detail::release_watcher watcher;
    std::unordered_multimap<int, op*> waiting;  // watch descriptor -> operations
};
std::unordered_map<uv_loop_t*, loop_watch*> loop_watches;
std::atomic<std::uint64_t> next_arrival{0};

}  // namespace

struct op {
    op(uv_loop_t* l, filelock::detail::acquisition a, completion cb)
        : loop(l),
          acq(std::in_place, std::move(a)),
          callback(std::move(cb)),
          ctl(std::make_shared<control>()) {}

    uv_loop_t* loop;
    uv_timer_t timer{};
    uv_async_t async{};
    int open_handles = 0;
    bool finished = false;
    loop_watch* watch = nullptr;  // set while registered for release events
    int wd = -1;
    std::uint64_t arrival = next_arrival++;  // order of the operations' starts
    std::optional<filelock::detail::acquisition> acq;
    completion callback;
    std::shared_ptr<control> ctl;

    static void on_close(uv_handle_t* h) {
        auto* self = static_cast<op*>(h->data);
        if (--self->open_handles == 0) delete self;
    }

    static void on_timer(uv_timer_t* t) { static_cast<op*>(t->data)->step(false); }

    static void on_poll(uv_poll_t* p, int status, int) {
        auto* lw = static_cast<loop_watch*>(p->data);
        if (status < 0) return;
        std::vector<op*> woken;
        std::vector<op*> moved;
        for (const auto& ev : lw->watcher.drain()) {
            auto [b, e] = lw->waiting.equal_range(ev.wd);
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

    void watch_release() {
        if (wd >= 0 || !acq->target().wake_on_release()) return;
        loop_watch* lw;
        {
            std::lock_guard<std::mutex> g(registry_mutex);
            auto it = loop_watches.find(loop);
            lw = it == loop_watches.end() ? nullptr : it->second;
        }
        if (!lw) {
            auto fresh = std::make_unique<loop_watch>();
            fresh->loop = loop;
            if (!fresh->watcher.valid() ||
                uv_poll_init(loop, &fresh->poll, fresh->watcher.native_handle()) != 0)
                return;  // no events: the backoff alone
            fresh->poll.data = fresh.get();
            uv_poll_start(&fresh->poll, UV_READABLE, on_poll);
            lw = fresh.release();
            std::lock_guard<std::mutex> g(registry_mutex);
            loop_watches[loop] = lw;
        }
        wd = lw->watcher.add(acq->target().path());
        if (wd < 0) return;
        watch = lw;
        lw->waiting.emplace(wd, this);
    }

    void unwatch() {
        if (!watch) return;
        auto [b, e] = watch->waiting.equal_range(wd);
        for (auto it = b; it != e; ++it)
            if (it->second == this) {
                watch->waiting.erase(it);
                break;
            }
        watch->watcher.remove(wd);
        watch = nullptr;
        wd = -1;
    }

    // Called with registry_mutex held, after this operation left the registry.
    static void close_watch_if_idle(uv_loop_t* loop) {
        if (registry.count(loop)) return;
        auto it = loop_watches.find(loop);
        if (it == loop_watches.end()) return;
        loop_watch* lw = it->second;
        loop_watches.erase(it);
        uv_close(reinterpret_cast<uv_handle_t*>(&lw->poll),
                 [](uv_handle_t* h) { delete static_cast<loop_watch*>(h->data); });
    }

    static void on_async(uv_async_t* a) {
        auto* self = static_cast<op*>(a->data);
        if (!self->finished && self->ctl->cancel_requested.load())
            self->finish(std::make_error_code(std::errc::operation_canceled), {});
    }

    void step(bool woken) {
        if (ctl->cancel_requested.load())
            return finish(std::make_error_code(std::errc::operation_canceled), {});
        const auto next = acq->resume(filelock::detail::clock::now(), woken, wd >= 0);
        if (next.is_done()) return finish(next.ec, next.ec ? lock_file() : acq->target().take());
        watch_release();
        // uv timers count whole milliseconds: a shorter wait (the quick
        // retries after a release event) becomes "next loop iteration".
        using namespace std::chrono;
        const auto ms = next.delay < 1ms
                            ? std::uint64_t{0}
                            : static_cast<std::uint64_t>(ceil<milliseconds>(next.delay).count());
        uv_timer_start(&timer, on_timer, ms, 0);
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
        {
            std::lock_guard<std::mutex> g(registry_mutex);
            auto [b, e] = registry.equal_range(loop);
            for (auto it = b; it != e; ++it)
                if (it->second == this) {
                    registry.erase(it);
                    break;
                }
        }
        completion cb = std::move(callback);
        acq.reset();  // closes the waiter's descriptor now
        uv_close(reinterpret_cast<uv_handle_t*>(&timer), on_close);
        uv_close(reinterpret_cast<uv_handle_t*>(&async), on_close);
        if (cb) cb(ec, std::move(lock));
        // Watch clean-up after the callback: it is not on the way from the
        // release to the new holder.
        unwatch();
        std::lock_guard<std::mutex> g(registry_mutex);
        close_watch_if_idle(loop);  // the loop's last operation: let it close
    }
};

}  // namespace detail

request start(uv_loop_t* loop, const std::filesystem::path& path, std::chrono::nanoseconds timeout,
              const lock_options& options, detail::completion callback) {
    auto o = std::make_unique<detail::op>(
        loop, filelock::detail::make_acquisition(path, timeout, options), std::move(callback));
    o->timer.data = o.get();
    o->async.data = o.get();
    if (int rc = uv_async_init(loop, &o->async, detail::op::on_async); rc != 0)
        throw std::system_error(-rc, std::system_category(), "filelock::uv: uv_async_init");
    o->open_handles = 1;
    uv_timer_init(loop, &o->timer);
    o->open_handles = 2;
    // The first attempt runs on the next loop iteration: the callback is never
    // invoked from inside this call, and a cancel() made right after it
    // returns is seen before any attempt.
    uv_timer_start(&o->timer, detail::op::on_timer, 0, 0);
    o->ctl->target = o.get();
    {
        std::lock_guard<std::mutex> g(detail::registry_mutex);
        detail::registry.emplace(loop, o.get());
    }
    request req(o->ctl);
    o.release();  // owned by its handles from now on: freed in on_close
    return req;
}

void request::cancel() const noexcept {
    if (!control_) return;
    std::lock_guard<std::mutex> g(control_->mutex);
    control_->cancel_requested.store(true);
    if (control_->target) uv_async_send(&control_->target->async);
}

void request::abandon() const noexcept {
    if (!control_) return;
    std::lock_guard<std::mutex> g(control_->mutex);
    control_->cancel_requested.store(true);
    if (control_->target) {
        control_->target->callback = {};
        uv_async_send(&control_->target->async);
    }
}

bool request::pending() const noexcept {
    if (!control_) return false;
    std::lock_guard<std::mutex> g(control_->mutex);
    return control_->target != nullptr;
}

void cancel_all(uv_loop_t* loop) noexcept {
    std::vector<detail::op*> ops;
    {
        std::lock_guard<std::mutex> g(detail::registry_mutex);
        auto [b, e] = detail::registry.equal_range(loop);
        for (auto it = b; it != e; ++it) ops.push_back(it->second);
    }
    for (auto* o : ops) {
        if (o->finished) continue;  // a callback of this loop already ended it
        o->ctl->cancel_requested.store(true);
        o->finish(std::make_error_code(std::errc::operation_canceled), {});
    }
}

}  // namespace filelock::uv
