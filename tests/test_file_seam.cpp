// SPDX-License-Identifier: MIT
// The file backend's rules over a scripted platform seam (src/file/ops.hpp):
// the content decision, truncate-then-write, the identity rounds and the
// names of failed calls, each checked against a seam that answers as POSIX
// does and one that answers as Windows does. An in-memory filesystem stands
// behind both; the script changes it between calls.
#include <filelock/detail/file_backend.hpp>

#include "../src/file/ops.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

using filelock::errc;
using filelock::lock_options;
namespace d = filelock::detail;
namespace f = filelock::detail::file;

namespace {

enum class flavour { posix, windows };

struct node {
    unsigned long long ino = 0;
    std::string data;
    f::file_type type = f::file_type::regular;
    long fs_magic = 0;
    int exclusive_holder = 0;                   // the handle holding it (0: none)
    std::set<int> shared_holders;               // of the whole-file lock
    std::map<std::uint64_t, int> byte_holders;  // one-byte range locks (slots), by offset
};

// A filesystem in memory behind the seam, answering as `fl` does: its call
// names, Windows's offset-1 holder reads, its lack of OFD locks and of
// pseudo filesystems, "gone" for a file pending deletion.
class scripted_ops final : public f::ops {
public:
    explicit scripted_ops(flavour fl) : fl_(fl) {}

    // The files, by path.
    std::map<std::string, std::shared_ptr<node>> files;
    // Every call made, by its seam name, in order.
    mutable std::vector<std::string> calls;
    // Called after each call named as its key returned (it may change files).
    std::map<std::string, std::function<void()>> after;
    // Calls that fail once with this error (then the entry is dropped).
    mutable std::map<std::string, std::error_code> fail_once;
    mutable std::map<int, std::shared_ptr<node>> open_handles;

    std::shared_ptr<node> make(const std::string& path, std::string data = {}) {
        auto n = std::make_shared<node>();
        n->ino = ++next_ino_;
        n->data = std::move(data);
        files[path] = n;
        return n;
    }
    bool windows() const { return fl_ == flavour::windows; }
    const char* name(const char* posix, const char* win) const { return windows() ? win : posix; }

    std::uint64_t holder_offset() const noexcept override { return windows() ? 1 : 0; }

    f::failure supports(const f::lock_spec& s) const noexcept override {
        if (windows() && s.ofd) return {errc::unsupported, "LockFileEx"};
        return {};
    }

    f::failure open(const std::filesystem::path& p, const f::open_spec&,
                    d::native_handle_type& h) const noexcept override {
        h = d::no_handle;
        if (auto fail = step("open", name("open", "CreateFileW"))) return fail;
        auto& files_ = const_cast<scripted_ops*>(this)->files;
        auto it = files_.find(p.string());
        if (it == files_.end()) it = files_.emplace(p.string(), fresh()).first;
        const int id = ++next_handle_;
        open_handles[id] = it->second;
        h = to_handle(id);
        return done("open");
    }

    f::failure open_to_read(const std::filesystem::path& p,
                            d::native_handle_type& h) const noexcept override {
        h = d::no_handle;
        auto it = files.find(p.string());
        if (it == files.end()) return {std::make_error_code(std::errc::no_such_file_or_directory)};
        const int id = ++next_handle_;
        open_handles[id] = it->second;
        h = to_handle(id);
        return {};
    }

    f::failure try_lock(d::native_handle_type h, const f::lock_spec& s) const noexcept override {
        last_spec = s;
        if (auto fail =
                step("try_lock", s.ofd ? "fcntl(F_OFD_SETLK)" : name("flock", "LockFileEx")))
            return fail;
        auto& n = *open_handles.at(id_of(h));
        const int id = id_of(h);
        if (s.ofd && s.range.length == 1) {  // a slot's byte
            auto [it, fresh] = n.byte_holders.emplace(s.range.start, id);
            if (!fresh && it->second != id) return {errc::locked};
            return done("try_lock");
        }
        if (n.exclusive_holder != 0 && n.exclusive_holder != id) return {errc::locked};
        if (s.shared) {
            n.shared_holders.insert(id);
            return done("try_lock");
        }
        for (int other : n.shared_holders)
            if (other != id) return {errc::locked};
        n.exclusive_holder = id;
        return done("try_lock");
    }

    void unlock(d::native_handle_type h, const f::lock_spec& s) const noexcept override {
        calls.push_back("unlock");
        auto& n = *open_handles.at(id_of(h));
        if (s.ofd && s.range.length == 1) {
            auto it = n.byte_holders.find(s.range.start);
            if (it != n.byte_holders.end() && it->second == id_of(h)) n.byte_holders.erase(it);
            return;
        }
        if (n.exclusive_holder == id_of(h)) n.exclusive_holder = 0;
        n.shared_holders.erase(id_of(h));
    }

    // The whole-file lock's holders, by handle.
    std::string flock_holders(const f::file_info& fi) const noexcept override {
        std::string out;
        for (const auto& [path, n] : files) {
            if (n->ino != fi.ino) continue;
            if (n->exclusive_holder) out += std::to_string(n->exclusive_holder);
            for (int id : n->shared_holders) out += (out.empty() ? "" : ", ") + std::to_string(id);
        }
        return out;
    }

    f::failure info(d::native_handle_type h, f::file_info& out) const noexcept override {
        if (auto fail = step("info", name("fstat", "GetFileInformationByHandle"))) return fail;
        out = info_of(*open_handles.at(id_of(h)));
        return done("info");
    }

    f::failure info_at(const std::filesystem::path& p, bool,
                       f::file_info& out) const noexcept override {
        if (auto fail = step("info_at", name("lstat", "CreateFileW"))) return fail;
        auto it = files.find(p.string());
        if (it == files.end()) {
            // POSIX: ENOENT; Windows: not found, or access denied while the
            // file is pending deletion. Both are "gone".
            f::failure gone{windows() ? std::error_code(5, std::system_category())
                                      : std::make_error_code(std::errc::no_such_file_or_directory),
                            name("lstat", "CreateFileW")};
            gone.gone = true;
            return gone;
        }
        out = info_of(*it->second);
        return done("info_at");
    }

    f::failure not_regular(f::file_type t) const noexcept override {
        if (windows()) return {errc::not_a_regular_file, "GetFileType"};
        if (t == f::file_type::directory)
            return {std::make_error_code(std::errc::is_a_directory), "fstat"};
        return {errc::not_a_regular_file, "fstat"};
    }

    f::failure fs_type(d::native_handle_type h, const f::file_info&,
                       long& magic) const noexcept override {
        magic = 0;
        if (windows()) return {};  // no call: no pseudo filesystems
        if (auto fail = step("fs_type", "fstatfs")) return fail;
        magic = open_handles.at(id_of(h))->fs_magic;
        return done("fs_type");
    }

    f::failure read_at(d::native_handle_type h, char* buf, std::size_t size, std::uint64_t offset,
                       std::size_t& n) const noexcept override {
        n = 0;
        if (auto fail = step("read_at", name("pread", "ReadFile"))) return fail;
        const std::string& data = open_handles.at(id_of(h))->data;
        if (offset < data.size()) n = data.copy(buf, size, static_cast<std::size_t>(offset));
        return done("read_at");
    }

    f::failure truncate(d::native_handle_type h, std::uint64_t size) const noexcept override {
        if (auto fail = step("truncate", name("ftruncate", "SetEndOfFile"))) return fail;
        open_handles.at(id_of(h))->data.resize(static_cast<std::size_t>(size));
        return done("truncate");
    }

    f::failure write_at(d::native_handle_type h, const char* buf, std::size_t size,
                        std::uint64_t offset, std::size_t& n) const noexcept override {
        n = 0;
        if (auto fail = step("write_at", name("pwrite", "WriteFile"))) return fail;
        std::string& data = open_handles.at(id_of(h))->data;
        // One byte at a time: the backend must loop until all is written.
        n = 1;
        if (data.size() < offset + n) data.resize(static_cast<std::size_t>(offset + n));
        data[static_cast<std::size_t>(offset)] = buf[0];
        (void)size;
        return done("write_at");
    }

    void remove(const std::filesystem::path& p) const noexcept override {
        calls.push_back("remove");
        const_cast<scripted_ops*>(this)->files.erase(p.string());
    }

    void unlock_close(d::native_handle_type h, const f::lock_spec&) const noexcept override {
        calls.push_back("unlock_close");
        drop_locks(h);
        open_handles.erase(id_of(h));
    }

    void close(d::native_handle_type h) const noexcept override {
        calls.push_back("close");
        drop_locks(h);  // closing drops the locks
        open_handles.erase(id_of(h));
    }

    // What the last try_lock was asked for.
    mutable f::lock_spec last_spec;

private:
    void drop_locks(d::native_handle_type h) const {
        auto& n = *open_handles.at(id_of(h));
        if (n.exclusive_holder == id_of(h)) n.exclusive_holder = 0;
        n.shared_holders.erase(id_of(h));
        std::erase_if(n.byte_holders, [&](const auto& b) { return b.second == id_of(h); });
    }
    static d::native_handle_type to_handle(int id) {
#if defined(_WIN32)
        return reinterpret_cast<d::native_handle_type>(static_cast<std::intptr_t>(id));
#else
        return id;
#endif
    }
    static int id_of(d::native_handle_type h) {
#if defined(_WIN32)
        return static_cast<int>(reinterpret_cast<std::intptr_t>(h));
#else
        return h;
#endif
    }
    std::shared_ptr<node> fresh() const {
        auto n = std::make_shared<node>();
        n->ino = ++next_ino_;
        return n;
    }
    static f::file_info info_of(const node& n) {
        f::file_info i;
        i.dev = 7;
        i.ino = n.ino;
        i.size = n.data.size();
        i.type = n.type;
        return i;
    }
    // Logs the call; fails it if scripted to.
    f::failure step(const char* seam_name, const char* call) const {
        calls.push_back(seam_name);
        auto it = fail_once.find(seam_name);
        if (it == fail_once.end()) return {};
        const auto ec = it->second;
        fail_once.erase(it);
        return {ec, call};
    }
    f::failure done(const char* seam_name) const {
        auto it = after.find(seam_name);
        if (it != after.end()) it->second();
        return {};
    }

    flavour fl_;
    mutable int next_handle_ = 100;
    mutable unsigned long long next_ino_ = 0;
};

lock_options tagged() {
    lock_options o;
    o.content_template = "tag";  // " tag\n"
    return o;
}

const std::string ours = " tag\n";

int count(const std::vector<std::string>& calls, const std::string& name) {
    int n = 0;
    for (const auto& c : calls) n += c == name;
    return n;
}

std::ptrdiff_t index_of(const std::vector<std::string>& calls, const std::string& name) {
    for (std::size_t i = 0; i < calls.size(); ++i)
        if (calls[i] == name) return static_cast<std::ptrdiff_t>(i);
    return -1;
}

// Wins with the backend and releases what it took through the seam.
void release(scripted_ops& os, d::file_backend& b) {
    d::held_file h = b.take();
    f::release_held(os, h);
}

}  // namespace

TEST_CASE("file seam: a new file gets the holder's line, without a truncation") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    CAPTURE(fl == flavour::windows);
    scripted_ops os(fl);
    d::file_backend b("a.lock", tagged(), os);
    REQUIRE(!b.try_acquire());
    CHECK(os.files.at("a.lock")->data == ours);
    CHECK(count(os.calls, "truncate") == 0);
    CHECK(count(os.calls, "write_at") == static_cast<int>(ours.size()));  // looped to the end
    // POSIX checks the filesystem type (never write to /proc); Windows has none.
    CHECK(count(os.calls, "fs_type") == (fl == flavour::posix ? 1 : 0));
    // The lock is taken before the identity is checked, and that before writing.
    CHECK(index_of(os.calls, "try_lock") < index_of(os.calls, "info_at"));
    CHECK(index_of(os.calls, "info_at") < index_of(os.calls, "write_at"));
    release(os, b);
    CHECK(os.open_handles.empty());
    CHECK(os.files.at("a.lock")->exclusive_holder == 0);
}

TEST_CASE("file seam: a longer holder's line is truncated first, then written") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    CAPTURE(fl == flavour::windows);
    scripted_ops os(fl);
    os.make("a.lock", " 1234567890\n");
    d::file_backend b("a.lock", tagged(), os);
    REQUIRE(!b.try_acquire());
    CHECK(os.files.at("a.lock")->data == ours);
    REQUIRE(index_of(os.calls, "truncate") >= 0);
    CHECK(index_of(os.calls, "truncate") < index_of(os.calls, "write_at"));
    CHECK(index_of(os.calls, "read_at") < index_of(os.calls, "truncate"));
    release(os, b);
}

TEST_CASE("file seam: a failing write leaves a prefix of a holder's line, named by its call") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    CAPTURE(fl == flavour::windows);
    scripted_ops os(fl);
    os.make("a.lock", " 1234567890\n");
    os.fail_once["write_at"] = std::make_error_code(std::errc::no_space_on_device);
    d::file_backend b("a.lock", tagged(), os);
    const auto ec = b.try_acquire();
    CHECK(ec == std::errc::no_space_on_device);
    CHECK(std::string(b.failed_call()) == (fl == flavour::posix ? "pwrite" : "WriteFile"));
    // Truncated to our length before the write: never foreign bytes.
    CHECK(os.files.at("a.lock")->data == " 1234");
    CHECK(os.open_handles.empty());  // unlocked and closed
    CHECK(os.files.at("a.lock")->exclusive_holder == 0);
}

TEST_CASE("file seam: each failing call is reported with its platform's name, nothing held") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    CAPTURE(fl == flavour::windows);
    struct row {
        const char* seam;
        const char* posix;
        const char* windows;
    };
    for (const row r : {row{"open", "open", "CreateFileW"}, row{"try_lock", "flock", "LockFileEx"},
                        row{"info", "fstat", "GetFileInformationByHandle"},
                        row{"info_at", "lstat", "CreateFileW"}, row{"read_at", "pread", "ReadFile"},
                        row{"truncate", "ftruncate", "SetEndOfFile"}}) {
        CAPTURE(r.seam);
        scripted_ops os(fl);
        os.make("a.lock", " 1234567890\n");
        os.fail_once[r.seam] = std::make_error_code(std::errc::io_error);
        d::file_backend b("a.lock", tagged(), os);
        CHECK(b.try_acquire() == std::errc::io_error);
        REQUIRE(b.failed_call() != nullptr);
        CHECK(std::string(b.failed_call()) == (fl == flavour::posix ? r.posix : r.windows));
        CHECK(os.open_handles.empty());
        CHECK(os.files.at("a.lock")->data == " 1234567890\n");  // untouched
        CHECK(os.files.at("a.lock")->exclusive_holder == 0);
    }
}

TEST_CASE("file seam: foreign content is never overwritten; kept with lock_without_content") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    CAPTURE(fl == flavour::windows);
    for (const std::string& foreign : {std::string("#!/bin/sh\n"), std::string("x\n"),
                                       std::string(2000, 'a'), std::string(" two\nlines\n")}) {
        scripted_ops os(fl);
        os.make("a.lock", foreign);
        {
            d::file_backend b("a.lock", tagged(), os);
            CHECK(b.try_acquire() == errc::foreign_content);
            CHECK(os.open_handles.empty());
            CHECK(count(os.calls, "truncate") + count(os.calls, "write_at") == 0);
        }
        auto keep = tagged();
        keep.on_foreign_content = filelock::foreign_content::lock_without_content;
        d::file_backend b("a.lock", keep, os);
        CHECK(!b.try_acquire());
        CHECK(os.files.at("a.lock")->data == foreign);
        // A file longer than a holder's line is not even read.
        if (foreign.size() > 1024) CHECK(count(os.calls, "read_at") == 0);
        release(os, b);
    }
}

TEST_CASE("file seam: our own line already there is not written again") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    scripted_ops os(fl);
    os.make("a.lock", ours);
    d::file_backend b("a.lock", tagged(), os);
    REQUIRE(!b.try_acquire());
    CHECK(count(os.calls, "write_at") == 0);
    CHECK(count(os.calls, "truncate") == 0);
    release(os, b);
}

TEST_CASE("file seam: a pseudo filesystem is never written (POSIX asks, Windows has none)") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    scripted_ops os(fl);
    os.make("a.lock")->fs_magic = 0x9fa0;  // proc
    d::file_backend b("a.lock", tagged(), os);
    if (fl == flavour::posix) {
        CHECK(b.try_acquire() == errc::pseudo_file);
        CHECK(os.open_handles.empty());
        CHECK(count(os.calls, "write_at") == 0);
    } else {
        CHECK(!b.try_acquire());
        release(os, b);
    }
    // A lock that writes nothing does not ask.
    scripted_ops quiet(fl);
    quiet.make("a.lock")->fs_magic = 0x9fa0;
    auto simple = tagged();
    simple.write_content = false;
    d::file_backend s("a.lock", simple, quiet);
    CHECK(!s.try_acquire());
    CHECK(count(quiet.calls, "fs_type") == 0);
    release(quiet, s);
}

TEST_CASE("file seam: a file replaced after the lock was won is retried on the new file") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    CAPTURE(fl == flavour::windows);
    scripted_ops os(fl);
    auto old = os.make("a.lock", " old\n");
    int replaced = 0;
    os.after["try_lock"] = [&] {
        if (replaced++ == 0) os.make("a.lock");  // renamed over, between lock and check
    };
    d::file_backend b("a.lock", tagged(), os);
    REQUIRE(!b.try_acquire());
    CHECK(count(os.calls, "open") == 2);
    CHECK(old->data == " old\n");  // the file no longer named is left alone
    CHECK(old->exclusive_holder == 0);
    CHECK(os.files.at("a.lock")->data == ours);
    d::lock_identity id;
    REQUIRE(b.identity(id));
    CHECK(id.ino == os.files.at("a.lock")->ino);
    release(os, b);
}

TEST_CASE("file seam: a file unlinked after the lock was won (or pending deletion) is retried") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    scripted_ops os(fl);
    os.make("a.lock");
    int removed = 0;
    os.after["try_lock"] = [&] {
        if (removed++ == 0) os.files.erase("a.lock");
    };
    d::file_backend b("a.lock", tagged(), os);
    REQUIRE(!b.try_acquire());
    CHECK(count(os.calls, "open") == 2);
    CHECK(os.files.at("a.lock")->data == ours);
    release(os, b);
}

TEST_CASE("file seam: a path that keeps changing counts as contention, and holds nothing") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    scripted_ops os(fl);
    os.make("a.lock");
    os.after["try_lock"] = [&] { os.make("a.lock"); };
    d::file_backend b("a.lock", tagged(), os);
    CHECK(b.try_acquire() == errc::locked);
    CHECK(count(os.calls, "open") == 16);
    CHECK(os.open_handles.empty());
    CHECK(count(os.calls, "write_at") == 0);
}

TEST_CASE("file seam: contention keeps the handle for the next attempt") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    scripted_ops os(fl);
    os.make("a.lock", " 42\n")->exclusive_holder = 1;
    d::file_backend b("a.lock", tagged(), os);
    CHECK(b.try_acquire() == errc::locked);
    CHECK(b.try_acquire() == errc::locked);
    CHECK(count(os.calls, "open") == 1);
    CHECK(os.open_handles.size() == 1);
    // The holder's content, read where others read it (Windows: from byte 1,
    // the locked byte 0 being the line's leading space).
    CHECK(b.holder() == "42");
    os.files.at("a.lock")->exclusive_holder = 0;
    REQUIRE(!b.try_acquire());
    CHECK(count(os.calls, "open") == 1);
    CHECK(os.files.at("a.lock")->data == ours);
    release(os, b);
    CHECK(os.open_handles.empty());
}

TEST_CASE("file seam: OFD and byte ranges reach the lock (POSIX); Windows refuses before opening") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    scripted_ops os(fl);
    os.make("a.lock", "data that is not a holder's line");
    auto o = tagged();
    o.backend = filelock::lock_backend::ofd;
    o.range = {10, 5};
    d::file_backend b("a.lock", o, os);
    if (fl == flavour::windows) {
        CHECK(b.try_acquire() == errc::unsupported);
        CHECK(std::string(b.failed_call()) == "LockFileEx");
        CHECK(os.calls.empty());
        return;
    }
    REQUIRE(!b.try_acquire());
    CHECK(os.last_spec.ofd);
    CHECK(!os.last_spec.shared);
    CHECK(os.last_spec.range == filelock::byte_range{10, 5});
    // A range holder writes nothing and reads nothing.
    CHECK(count(os.calls, "read_at") + count(os.calls, "write_at") == 0);
    CHECK(os.files.at("a.lock")->data == "data that is not a holder's line");
    d::lock_identity id;
    REQUIRE(b.identity(id));
    CHECK((id.backend == 1 && id.start == 10 && id.length == 5));
    release(os, b);
}

TEST_CASE("file seam: remove_on_release removes only the file still held") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    scripted_ops os(fl);
    auto o = tagged();
    o.remove_on_release = true;
    {
        d::file_backend b("a.lock", o, os);
        REQUIRE(!b.try_acquire());
        release(os, b);
        CHECK(os.files.count("a.lock") == 0);
    }
    {
        d::file_backend b("a.lock", o, os);
        REQUIRE(!b.try_acquire());
        os.make("a.lock", "someone else's");  // replaced while held
        release(os, b);
        REQUIRE(os.files.count("a.lock") == 1);
        CHECK(os.files.at("a.lock")->data == "someone else's");
    }
}

TEST_CASE("file seam: a directory or device locked through a read-only handle is refused") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    scripted_ops os(fl);
    os.make("d")->type = f::file_type::directory;
    auto simple = tagged();
    simple.write_content = false;
    d::file_backend b("d", simple, os);
    const auto ec = b.try_acquire();
    if (fl == flavour::posix)
        CHECK(ec == std::errc::is_a_directory);
    else
        CHECK(ec == errc::not_a_regular_file);  // (Windows refuses at open; never reached)
    CHECK(os.open_handles.empty());
}

namespace {

lock_options with_slots(unsigned n) {
    lock_options o = tagged();
    o.slots = n;
    return o;
}

}  // namespace

TEST_CASE("file seam: slots admit N holders, each on its own byte past the content") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    scripted_ops os(fl);
    auto file = os.make("a.lock", " 42\n");
    std::vector<std::unique_ptr<d::file_backend>> holders;
    for (unsigned i = 0; i < 3; ++i) {
        holders.push_back(std::make_unique<d::file_backend>("a.lock", with_slots(3), os));
        REQUIRE(!holders.back()->try_acquire());
        CHECK(os.last_spec.ofd);
        CHECK(os.last_spec.range == filelock::byte_range{filelock::slot_offset + i, 1});
    }
    CHECK(file->shared_holders.size() == 3);  // each holds the whole-file lock, shared
    // The fourth finds every slot taken: contention, and it keeps nothing
    // but its handle (an exclusive whole-file user does not wait for it).
    d::file_backend fourth("a.lock", with_slots(3), os);
    CHECK(fourth.try_acquire() == errc::locked);
    CHECK(file->shared_holders.size() == 3);
    CHECK(os.open_handles.size() == 4);
    // Its holders: those of the whole-file lock (slot holders write nothing).
    CHECK(fourth.holder() == "101, 102, 103");
    // Slot holders neither read nor write the content.
    CHECK(count(os.calls, "read_at") + count(os.calls, "write_at") + count(os.calls, "truncate") ==
          0);
    CHECK(file->data == " 42\n");
    // The second holder leaves: the fourth gets its slot.
    d::held_file h = holders[1]->take();
    CHECK(h.slots == 3);
    CHECK(h.slot == 1);
    f::release_held(os, h);
    CHECK(file->byte_holders.count(filelock::slot_offset + 1) == 0);
    REQUIRE(!fourth.try_acquire());
    d::held_file won = fourth.take();
    CHECK(won.slot == 1);
    CHECK(count(os.calls, "open") == 4);  // its handle was kept between attempts
    // Identity: the slots' own tag and bytes, the same for a waiter and a holder.
    d::lock_identity id;
    REQUIRE(holders[0]->identity(id));
    CHECK((id.backend == 3 && id.start == filelock::slot_offset && id.length == 3));
    f::release_held(os, won);
    for (unsigned i : {0u, 2u}) {
        d::held_file rest = holders[i]->take();
        f::release_held(os, rest);
    }
    CHECK(file->shared_holders.empty());
    CHECK(file->byte_holders.empty());
    CHECK(os.open_handles.empty());
    CHECK(file->data == " 42\n");
}

TEST_CASE("file seam: an exclusive whole-file holder and slot holders exclude each other") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    scripted_ops os(fl);
    os.make("a.lock");
    {
        d::file_backend one("a.lock", tagged(), os);
        REQUIRE(!one.try_acquire());
        d::file_backend slot("a.lock", with_slots(4), os);
        CHECK(slot.try_acquire() == errc::locked);
        CHECK(os.files.at("a.lock")->byte_holders.empty());  // no slot taken meanwhile
        release(os, one);
        REQUIRE(!slot.try_acquire());
        d::file_backend other("a.lock", tagged(), os);
        CHECK(other.try_acquire() == errc::locked);
        release(os, slot);
        REQUIRE(!other.try_acquire());
        release(os, other);
    }
    CHECK(os.open_handles.empty());
}

TEST_CASE("file seam: one slot is the one-holder lock, call for call") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    std::vector<std::string> calls[2];
    std::string data[2];
    for (int i = 0; i < 2; ++i) {
        scripted_ops os(fl);
        os.make("a.lock", " 42\n");
        d::file_backend b("a.lock", i == 0 ? tagged() : with_slots(1), os);
        REQUIRE(!b.try_acquire());
        CHECK(!os.last_spec.ofd);
        CHECK(!os.last_spec.shared);
        release(os, b);
        calls[i] = os.calls;
        data[i] = os.files.at("a.lock")->data;
    }
    CHECK(calls[0] == calls[1]);
    CHECK(data[0] == data[1]);
    CHECK(data[1] == ours);
}

TEST_CASE("file seam: bad slots are refused before the file is touched, naming the cause") {
    const auto fl = GENERATE(flavour::posix, flavour::windows);
    struct row {
        lock_options options;
        std::string cause;
    };
    auto shared = with_slots(2);
    shared.mode = filelock::lock_mode::shared;
    auto ofd = with_slots(2);
    ofd.backend = filelock::lock_backend::ofd;
    auto ranged = with_slots(2);
    ranged.range = {0, 1};
    const row rows[] = {
        {with_slots(0), "lock_options::slots must be from 1 to filelock::max_slots (1024)"},
        {with_slots(filelock::max_slots + 1),
         "lock_options::slots must be from 1 to filelock::max_slots (1024)"},
        {shared, "lock_options::slots with lock_mode::shared"},
        {ofd, "lock_options::slots with lock_backend::ofd"},
        {ranged, "lock_options::slots with a byte range"},
    };
    for (const auto& r : rows) {
        scripted_ops os(fl);
        d::file_backend b("a.lock", r.options, os);
        CHECK(b.try_acquire() == std::errc::invalid_argument);
        REQUIRE(b.failed_call());
        CHECK(std::string(b.failed_call()) == r.cause);
        CHECK(os.calls.empty());
        CHECK(os.files.empty());
    }
    scripted_ops os(fl);
    d::file_backend most("a.lock", with_slots(filelock::max_slots), os);
    CHECK(!most.try_acquire());
    release(os, most);
}
