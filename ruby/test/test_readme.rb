# frozen_string_literal: true

require "stringio"
require_relative "test_helper"

# The Ruby quick start of the READMEs runs: the fenced block after the
# `<!-- quickstart: ruby -->` marker is evaluated, and its `# =>` comments are
# checked. The gem's README ships with the gem; the repository's README.md
# (when this runs from a checkout) must carry the same block.
class CudannReadmeTest < CudannTestCase
  GEM_README = File.expand_path("../README.md", __dir__)
  REPO_README = File.expand_path("../../README.md", __dir__)

  def self.quick_start(path)
    text = File.read(path)
    marker = text.index("<!-- quickstart: ruby -->") or raise "#{path}: no quickstart marker"
    text[marker..][/```ruby\n(.*?)```/m, 1] or raise "#{path}: no ruby block after the marker"
  end

  def test_gem_readme_quick_start_runs
    code = self.class.quick_start(GEM_README)
    assert_operator code.lines.size, :<=, 10
    lines = code.lines.reject { |l| l.start_with?("require ") }
    expected = lines.filter_map { |l| l[/# => (.*)$/, 1] }
    refute_empty expected, "the quick start shows its results"
    output = StringIO.new
    $stdout = output
    begin
      TOPLEVEL_BINDING.dup.eval(code, GEM_README) # rubocop:disable Security/Eval
    ensure
      $stdout = STDOUT
    end
    assert_equal expected, output.string.lines.map(&:chomp)
  end

  def test_repository_readme_has_the_same_quick_start
    skip "not in a checkout (no #{REPO_README})" unless File.exist?(REPO_README)

    assert_equal self.class.quick_start(GEM_README), self.class.quick_start(REPO_README)
  end
end
