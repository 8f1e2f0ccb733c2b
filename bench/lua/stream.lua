-- Workload 5 (streamed body): each piece of the 1 MB response as Envoy passes it on: count its
-- bytes, look for a marker; at the end, one debug log line with the totals (the bench's check).
local MARKER = "proxy-rhai-marker"
local find = string.find

function envoy_on_response(handle)
  local bytes, chunks, hits = 0, 0, 0
  for chunk in handle:bodyChunks() do
    local len = chunk:length()
    bytes = bytes + len
    chunks = chunks + 1
    if find(chunk:getBytes(0, len), MARKER, 1, true) then
      hits = hits + 1
    end
  end
  handle:logDebug("stream lua: " .. bytes .. " bytes, " .. chunks .. " chunks, " .. hits .. " with the marker")
end
