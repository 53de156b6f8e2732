#pragma once
// The byte-level BPE alphabet: every byte maps to a printable Unicode character (GPT-2's scheme),
// so that byte strings become vocabulary strings and back.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dpserve {

// Appends the byte-level characters (UTF-8) of the bytes of `bytes` to `out`.
void byte_level_encode(std::string_view bytes, std::string& out);

// Decodes a byte-level vocabulary string back to bytes; nullopt if some character is not part of
// the byte-level alphabet.
std::optional<std::string> byte_level_decode(std::string_view token);

}  // namespace dpserve
