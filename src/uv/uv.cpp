#include <filelock/detail/file_target.hpp>
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

// Pending operations per loop, for cancel_all().
std::mutex registry_mutex;
std::unordered_multimap<uv_loop_t*, op*> registry;

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
    std::optional<filelock::detail::acquisition> acq;
    completion callback;
    std::shared_ptr<control> ctl;

    static void on_close(uv_handle_t* h) {
        auto* self = static_cast<op*>(h->data);
        if (--self->open_handles == 0) delete self;
    }

    static void on_timer(uv_timer_t* t) { static_cast<op*>(t->data)->step(); }

    static void on_async(uv_async_t* a) {
        auto* self = static_cast<op*>(a->data);
        if (!self->finished && self->ctl->cancel_requested.load())
            self->finish(std::make_error_code(std::errc::operation_canceled), {});
    }

    void step() {
        if (ctl->cancel_requested.load())
            return finish(std::make_error_code(std::errc::operation_canceled), {});
        const auto next = acq->resume(filelock::detail::clock::now());
        if (next.is_done()) return finish(next.ec, next.ec ? lock_file() : acq->target().take());
        // uv timers count whole milliseconds: round up, never spin at 0.
        using namespace std::chrono;
        const auto ms = std::max<std::uint64_t>(
            1, static_cast<std::uint64_t>(ceil<milliseconds>(next.delay).count()));
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
