# frozen_string_literal: true

require_relative "lib/cudann/version"

Gem::Specification.new do |spec|
  spec.name = "cudann"
  spec.version = Cudann::VERSION
  spec.summary = "Ruby binding of libcudann, the C-ABI neural-network operator library"
  spec.description = "Every entry point of cudann.h over Arrays, FFI pointers, library (device) " \
                     "memory and Numo arrays, with shapes checked in Ruby and errors as Cudann::Error. " \
                     "Needs libcudann.so (installed, or CUDANN_LIB)."
  spec.authors = ["cudann"]
  spec.license = "MIT"
  spec.homepage = "https://github.com/cudann/cudann"
  spec.required_ruby_version = ">= 2.7"
  spec.files = Dir["lib/**/*.rb", "test/**/*.rb", "README.md", "cudann.gemspec"]
  spec.require_paths = ["lib"]
  spec.add_dependency "ffi", "~> 1.15"
  spec.add_development_dependency "minitest", "~> 5.0"
  spec.metadata["rubygems_mfa_required"] = "true"
end
