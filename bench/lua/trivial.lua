-- Workload 1 (trivial): read :path, answer 403 locally for /deny..., else add a request header;
-- set one response header.
function envoy_on_request(handle)
  local headers = handle:headers()
  local path = headers:get(":path")
  if path ~= nil and string.sub(path, 1, 5) == "/deny" then
    handle:respond({[":status"] = "403"}, "denied\n")
    return
  end
  headers:add("x-bench", "1")
end

function envoy_on_response(handle)
  handle:headers():replace("x-bench-resp", "1")
end
