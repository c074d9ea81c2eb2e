// Small file helpers: whole-file text I/O, atomic replacement, JSON-lines appends.
#pragma once
#include <string>

namespace dnns {

std::string read_text(const std::string& path);  // throws Error naming the path
// Writes to "<path>.tmp.<pid>", flushes to disk, renames over `path`: readers see the old
// or the new content, never a mix.
void write_text_atomic(const std::string& path, const std::string& content);
// Appends one line (a newline is added) and flushes it to disk.
void append_line(const std::string& path, const std::string& line);
bool file_exists(const std::string& path);
void make_dirs(const std::string& path);  // mkdir -p; throws Error naming the path

}  // namespace dnns
