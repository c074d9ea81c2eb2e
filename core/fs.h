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

// Whether this process writes files. In a data-parallel run every rank runs the same code and
// only rank 0 writes (nn/distributed.h turns the others off): write_text_atomic, append_line
// and save_archive (core/archive.h) then do nothing on them, after checking their arguments.
void set_file_writer(bool writes);
bool is_file_writer();
void make_dirs(const std::string& path);  // mkdir -p; throws Error naming the path

}  // namespace dnns
