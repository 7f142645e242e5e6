// SPDX-License-Identifier: MIT
// The etcd core's reactor on libuv: uv_timer_t and uv_poll_t handles (the
// pattern of libcurl's own libuv example), and a uv_async_t for posts. Every
// handle is heap-allocated and freed in its close callback, so it may be
// dropped from inside its own callback.
#include <filelock/detail/etcd_session.hpp>
#include <filelock/etcd_uv.hpp>

#include <deque>
#include <mutex>
#include <thread>

namespace filelock::etcd {
namespace detail {
namespace {

template <class Handle>
void close_and_free(Handle* h) {
    uv_close(reinterpret_cast<uv_handle_t*>(h),
             [](uv_handle_t* p) { delete reinterpret_cast<Handle*>(p); });
}

class uv_timer final : public reactor::timer {
public:
    explicit uv_timer(uv_loop_t* loop) : h_(new uv_timer_t) {
        uv_timer_init(loop, h_);
        h_->data = this;
    }
    ~uv_timer() override {
        uv_timer_stop(h_);
        h_->data = nullptr;
        close_and_free(h_);
    }
    void arm(reactor::time_point when, std::function<void()> f) override {
        f_ = std::move(f);
        const auto left = when - std::chrono::steady_clock::now();
        // libuv counts whole milliseconds: round up, never fire early.
        const auto ms =
            left <= left.zero() ? 0 : std::chrono::ceil<std::chrono::milliseconds>(left).count();
        uv_timer_start(
            h_,
            [](uv_timer_t* t) {
                auto* self = static_cast<uv_timer*>(t->data);
                if (!self) return;
                auto f = std::move(self->f_);
                self->f_ = nullptr;
                if (f) f();  // may destroy `self`
            },
            static_cast<std::uint64_t>(ms), 0);
    }
    void cancel() override {
        uv_timer_stop(h_);
        f_ = nullptr;
    }

private:
    uv_timer_t* h_;
    std::function<void()> f_;
};

class uv_socket final : public reactor::socket {
public:
    uv_socket(uv_loop_t* loop, reactor::native_socket fd) : h_(new uv_poll_t) {
        uv_poll_init_socket(loop, h_, static_cast<uv_os_sock_t>(fd));
        h_->data = this;
    }
    ~uv_socket() override {
        uv_poll_stop(h_);
        h_->data = nullptr;
        close_and_free(h_);
    }
    void want(bool read, bool write, std::function<void(bool, bool)> f) override {
        f_ = std::move(f);
        const int events = (read ? UV_READABLE : 0) | (write ? UV_WRITABLE : 0);
        if (!events) {
            uv_poll_stop(h_);
            return;
        }
        uv_poll_start(h_, events, [](uv_poll_t* p, int status, int ev) {
            auto* self = static_cast<uv_socket*>(p->data);
            if (!self) return;
            auto f = self->f_;  // the call may drop the watch
            // An error (a reset connection) is readiness: libcurl reads it.
            if (status < 0) ev = UV_READABLE | UV_WRITABLE;
            f((ev & UV_READABLE) != 0, (ev & UV_WRITABLE) != 0);
        });
    }

private:
    uv_poll_t* h_;
    std::function<void(bool, bool)> f_;
};

class uv_reactor final : public reactor {
public:
    explicit uv_reactor(uv_loop_t* loop) : loop_(loop), async_(new uv_async_t) {
        uv_async_init(loop_, async_, [](uv_async_t* a) {
            if (auto* self = static_cast<uv_reactor*>(a->data)) self->drain();
        });
        async_->data = this;
        // Idle, the async handle does not keep the loop running; pending
        // posts do (see post()).
        uv_unref(reinterpret_cast<uv_handle_t*>(async_));
        loop_thread_ = std::this_thread::get_id();
    }
    ~uv_reactor() override {
        async_->data = nullptr;
        close_and_free(async_);
    }

    std::unique_ptr<timer> make_timer() override { return std::make_unique<uv_timer>(loop_); }
    std::unique_ptr<socket> make_socket(native_socket fd) override {
        return std::make_unique<uv_socket>(loop_, fd);
    }
    void post(std::function<void()> f) override {
        {
            std::lock_guard<std::mutex> g(m_);
            q_.push_back(std::move(f));
        }
        // On the loop's thread, pending work keeps uv_run going (a completion
        // is never lost to a loop that ran dry); from another thread, the
        // loop must be running (or run again) to see it.
        if (std::this_thread::get_id() == loop_thread_)
            uv_ref(reinterpret_cast<uv_handle_t*>(async_));
        uv_async_send(async_);
    }

private:
    void drain() {
        std::deque<std::function<void()>> q;
        {
            std::lock_guard<std::mutex> g(m_);
            q.swap(q_);
        }
        uv_unref(reinterpret_cast<uv_handle_t*>(async_));
        // A post may destroy this reactor (the session's last reference):
        // the async handle's data tells.
        uv_async_t* a = async_;
        while (!q.empty()) {
            auto f = std::move(q.front());
            q.pop_front();
            f();
            if (!a->data) {
                return;  // destroyed; the rest are dropped
            }
        }
        std::lock_guard<std::mutex> g(m_);
        if (!q_.empty()) uv_ref(reinterpret_cast<uv_handle_t*>(async_));
    }

    uv_loop_t* loop_;
    uv_async_t* async_;
    std::thread::id loop_thread_;
    std::mutex m_;
    std::deque<std::function<void()>> q_;
};

std::unique_ptr<reactor> make_uv_reactor(uv_loop_t* loop) {
    return std::make_unique<uv_reactor>(loop);
}

}  // namespace
}  // namespace detail

uv_client::uv_client(uv_loop_t* loop, const config& cfg)
    : s_(std::make_shared<detail::session_handle>(detail::make_uv_reactor(loop), cfg)) {}

uv_client::~uv_client() = default;

uv_client::request uv_client::async_lock(std::string name, std::chrono::nanoseconds timeout,
                                         std::function<void(lock_result)> callback) {
    const auto id = s_->lock(std::move(name), timeout, std::move(callback));
    return request(s_, id);
}

uv_client::request uv_client::async_lock(std::string name, std::chrono::nanoseconds timeout,
                                         const lock_options& opts,
                                         std::function<void(lock_result)> callback) {
    const auto id = s_->lock(std::move(name), timeout, opts, std::move(callback));
    return request(s_, id);
}

uv_client::request uv_client::async_inspect(std::string name,
                                            std::function<void(inspect_result)> callback) {
    const auto id = s_->inspect(std::move(name), std::move(callback));
    return request(s_, id);
}

uv_client::request uv_client::async_wait_change(std::string name, std::int64_t revision,
                                                std::function<void(change_result)> callback) {
    const auto id = s_->wait_change(std::move(name), revision, std::move(callback));
    return request(s_, id);
}

std::uint64_t uv_client::requests() const noexcept { return s_->requests(); }
std::uint64_t uv_client::watches() const noexcept { return s_->watches(); }

void uv_client::request::cancel() const {
    if (auto s = s_.lock()) s->cancel(id_, std::make_error_code(std::errc::operation_canceled));
}

}  // namespace filelock::etcd
