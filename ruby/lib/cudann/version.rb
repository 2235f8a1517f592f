# frozen_string_literal: true

module Cudann
  # The gem's version (the library's own is Cudann.library_version).
  VERSION = "0.1.0"
end
