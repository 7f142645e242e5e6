// SPDX-License-Identifier: MIT
#include <filelock/error.hpp>

#include <cerrno>
#include <string>
#include <string_view>

namespace filelock {
namespace {

class category final : public std::error_category {
public:
    const char* name() const noexcept override { return "filelock"; }

    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
            case errc::locked: return "the lock is held by another holder";
            case errc::timeout: return "timed out waiting for the lock";
            case errc::invalid_template: return "invalid content template";
            case errc::not_a_regular_file: return "the lock file is not a regular file";
            case errc::symlink_not_followed:
                return "the lock file is a symbolic link (lock_options::follow_symlinks is off)";
            case errc::pseudo_file:
                return "the lock file is on a pseudo filesystem (proc, sysfs, ...); nothing was "
                       "written";
            case errc::foreign_content:
                return "the lock file holds data that is not a lock holder's line; nothing was "
                       "written (lock_options::foreign_content)";
            case errc::unsupported:
                return "not supported on this platform (lock_backend::ofd is Linux's)";
        }
        return "unknown filelock error";
    }

    bool equivalent(int ev, const std::error_condition& cond) const noexcept override {
        switch (static_cast<errc>(ev)) {
            case errc::locked:
                return cond == std::errc::resource_unavailable_try_again ||
                       cond == std::errc::operation_would_block;
            case errc::timeout: return cond == std::errc::timed_out;
            case errc::invalid_template: return cond == std::errc::invalid_argument;
            case errc::symlink_not_followed:
                return cond == std::errc::too_many_symbolic_link_levels;
            case errc::unsupported: return cond == std::errc::operation_not_supported;
            default: return default_error_condition(ev) == cond;
        }
    }
};

class conditions final : public std::error_category {
public:
    const char* name() const noexcept override { return "filelock.condition"; }

    std::string message(int ev) const override {
        switch (static_cast<condition>(ev)) {
            case condition::cancelled: return "cancelled";
        }
        return "unknown filelock condition";
    }

    bool equivalent(const std::error_code& code, int cond) const noexcept override {
        switch (static_cast<condition>(cond)) {
            case condition::cancelled:
                // Asio's own system category (named "asio.system") keeps
                // ECANCELED (ERROR_OPERATION_ABORTED, 995, on Windows) to
                // itself; every other source maps it.
                return code == std::errc::operation_canceled ||
                       ((code.value() == ECANCELED || code.value() == 995) &&
                        std::string_view(code.category().name()) == "asio.system");
        }
        return false;
    }
};

std::string quoted(const std::filesystem::path& path) {
    std::string s = "'";
    s += path.string();
    s += '\'';
    return s;
}

}  // namespace

const std::error_category& filelock_category() noexcept {
    static const category instance;
    return instance;
}

const std::error_category& condition_category() noexcept {
    static const conditions instance;
    return instance;
}

lock_error::lock_error(std::error_code ec, std::filesystem::path path, std::string holder)
    : std::system_error(ec),
      path_(std::move(path)),
      holder_(std::move(holder)),
      what_((ec == errc::timeout ? "Timed out waiting to lock " : "Couldn't lock ") +
            quoted(path_)) {}

lock_error::lock_error(std::filesystem::path path, std::string holder)
    : lock_error(errc::locked, std::move(path), std::move(holder)) {}

timeout_error::timeout_error(std::filesystem::path path, std::string holder)
    : lock_error(errc::timeout, std::move(path), std::move(holder)) {}

namespace detail {

void throw_error(std::error_code ec, const std::filesystem::path& path, std::string holder,
                 const char* call) {
    if (ec == errc::locked) throw lock_error(path, std::move(holder));
    if (ec == errc::timeout) throw timeout_error(path, std::move(holder));
    if (ec == condition::cancelled)
        throw std::system_error(ec, "filelock: cancelled waiting to lock " + quoted(path));
    throw std::filesystem::filesystem_error(
        std::string("filelock: cannot lock") + (call ? std::string(" (") + call + ")" : ""), path,
        ec);
}

}  // namespace detail
}  // namespace filelock
