#include <sys/mman.h>

#include "tools/commands.hpp"

namespace kvferry::tools {

mapped_buffer::mapped_buffer(size_t n) : size(n) {
  void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  data = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
}

mapped_buffer::~mapped_buffer() {
  if (data != nullptr)
    ::munmap(data, size);
}

} // namespace kvferry::tools
