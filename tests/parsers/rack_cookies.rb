# How Rack reads a request's Cookie fields (`Rack::Request#cookies`), for
# tests/cookie_parsers.rs.
#
# Reads one request per line on stdin: its Cookie fields, each written as
# `x` and its bytes in hex, separated by spaces. Answers each line with one
# JSON line, {"readings": [{"how": ..., "cookies": [[name, value], ...]}]}
# (or a reading's "error"): one reading per way a server hands the fields
# to the app (joined with ",", ", " or "; "; a single field as it is).
# Names and values are shown as latin-1, as the other harnesses do.
require "json"
require "rack"

def text(s)
  s.nil? ? nil : s.dup.force_encoding(Encoding::ISO_8859_1).encode(Encoding::UTF_8)
end

$stdout.sync = true
how = "rack #{Gem.loaded_specs['rack']&.version || Rack.release}"
$stdin.each_line do |line|
  fields = line.split.map { |t| [t[1..]].pack("H*") }
  ways = fields.length == 1 ? [["", fields[0]]] : [",", ", ", "; "].map { |j| [" joined #{j.inspect}", fields.join(j)] }
  readings = ways.map do |suffix, raw|
    reading = { "how" => how + suffix }
    begin
      env = { "HTTP_COOKIE" => raw, "REQUEST_METHOD" => "GET" }
      reading["cookies"] = Rack::Request.new(env).cookies.map { |k, v| [text(k), text(v)] }
    rescue StandardError => e
      reading["error"] = "#{e.class}: #{e.message}"
    end
    reading
  end
  puts JSON.generate({ "readings" => readings })
end
